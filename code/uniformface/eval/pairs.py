"""LFW `pairs.txt` (View 2, http://vis-www.cs.umass.edu/lfw/#views), read strictly (the format of LFW's README).

Format: a header `n_folds<TAB>n` (a lone `n` means one fold, as in `pairsDevTrain.txt`), then for each
fold `n` same-person lines `name<TAB>i<TAB>j` followed by `n` different-person lines
`name1<TAB>i<TAB>name2<TAB>j`; image `i` of `name` is `name/name_%04d.jpg`.

Unlike the official `evaluation.m` (which skips lines that are neither 3 nor 4 fields) and the earlier
port (which also dropped pairs whose image was missing, shifting every later fold), a malformed line
is an error naming the file and line, and missing images are reported, never dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..base.atomic import atomic_write_text
from ..base.paths import decimal, read_utf8_text, shown


@dataclass(frozen=True)
class Pair:
    left: str       # image path relative to the data root, e.g. "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    right: str
    is_same: bool
    fold: int       # 0-based


def image_path(name: str, index: int, ext: str = ".jpg") -> str:
    return f"{name}/{name}_{index:04d}{ext}"


def read_pairs(path: str | Path, ext: str = ".jpg") -> list[Pair]:
    """All pairs in file order, each with its 0-based fold. The file is UTF-8 text, with or without a
    byte-order mark. Raises ValueError naming `path:line`."""
    path = Path(path)
    lines = read_utf8_text(path).splitlines()
    while lines and not lines[-1].strip():  # trailing blank lines are harmless
        lines.pop()
    if not lines:
        raise ValueError(f"{path}: empty file, expected a header line 'n_folds<TAB>n_per_side'")

    header = [_positive_int(v) for v in lines[0].split()]
    if len(header) not in (1, 2) or None in header:
        raise ValueError(f"{path}:1: expected a header 'n_folds<TAB>n_per_side' of positive integers of at most "
                         f"{MAX_DIGITS} digits (e.g. '10\\t300'), found {shown(lines[0])}")
    n_folds, n = (1, header[0]) if len(header) == 1 else header

    expected = n_folds * 2 * n
    found = len(lines) - 1
    if found != expected:
        raise ValueError(f"{path}:1: header {lines[0]!r} announces {n_folds} fold(s) x {n} same + {n} different "
                         f"= {expected} pair lines, but {found} line(s) follow it")

    pairs = []
    for k, line in enumerate(lines[1:]):
        line_no = k + 2
        fold, within = divmod(k, 2 * n)
        same = within < n
        fields = line.split()
        what = ("a same-person line 'name<TAB>i<TAB>j'" if same else
                "a different-person line 'name1<TAB>i<TAB>name2<TAB>j'")
        where = f"{path}:{line_no}"
        context = f"(fold {fold + 1}, pair {within + 1} of {2 * n})"
        if len(fields) != (3 if same else 4):
            raise ValueError(f"{where}: expected {what} {context}, found {len(fields)} field(s): {shown(line)}")
        if same:
            name_l, i, j = fields
            name_r = name_l
        else:
            name_l, i, name_r, j = fields
        indices = [_positive_int(value) for value in (i, j)]
        for value, index in zip((i, j), indices):
            if index is None:
                raise ValueError(f"{where}: image index {shown(value, 40)} is not a positive integer of at most "
                                 f"{MAX_DIGITS} digits, in {what} {context}: {shown(line)}")
        pairs.append(Pair(image_path(name_l, indices[0], ext), image_path(name_r, indices[1], ext), same, fold))
    return pairs


def write_pairs(path: str | Path, folds: Sequence[tuple[Sequence[tuple], Sequence[tuple]]]) -> None:
    """Write `folds` = [(same, different), ...] in the `pairs.txt` format, atomically.
    `same` holds (name, i, j) tuples, `different` (name1, i, name2, j); every fold has the same n of each."""
    if not folds:
        raise ValueError(f"{path}: no folds to write")
    n = len(folds[0][0])
    rows = [f"{len(folds)}\t{n}"]
    for k, (same, different) in enumerate(folds):
        if len(same) != n or len(different) != n:
            raise ValueError(f"{path}: fold {k + 1} has {len(same)} same and {len(different)} different pairs; "
                             f"the format needs {n} of each in every fold")
        for row in same:
            if len(row) != 3:
                raise ValueError(f"{path}: fold {k + 1}: same pair {row!r} is not (name, i, j)")
            rows.append(f"{row[0]}\t{int(row[1])}\t{int(row[2])}")
        for row in different:
            if len(row) != 4:
                raise ValueError(f"{path}: fold {k + 1}: different pair {row!r} is not (name1, i, name2, j)")
            rows.append(f"{row[0]}\t{int(row[1])}\t{row[2]}\t{int(row[3])}")
    atomic_write_text(path, "\n".join(rows) + "\n")


def unique_images(pairs: Iterable[Pair]) -> list[str]:
    """Every image the pairs use, once, in order of first use (so features are computed once each)."""
    return list(dict.fromkeys(p for pair in pairs for p in (pair.left, pair.right)))


def missing_images(pairs: Iterable[Pair], root: str | Path) -> list[str]:
    """Sorted relative paths of every image of `pairs` that is not a file under `root`."""
    root = Path(root)
    return sorted(p for p in unique_images(pairs) if not (root / p).is_file())


MAX_DIGITS = 9  # LFW's counts and image numbers have at most 4


def _positive_int(text: str) -> int | None:
    """The number `text` writes in plain digits (`paths.decimal`, at most MAX_DIGITS), when it is above 0."""
    return decimal(text, MAX_DIGITS) or None
