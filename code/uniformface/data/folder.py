"""An aligned image folder as a training set: `root/<identity>/<file>`, one class per identity folder.

A face the detector missed that preprocess.py aligned with mean landmarks (a `fallback` row of the
folder's `preprocess_report.tsv`, or of the journal a killed run leaves) is a guess at where a face is:
test sets keep such crops so that no pair is lost, training never uses them (docs/DESIGN.md §6.6).
"""
from __future__ import annotations

import csv
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import torch

from ..base.images import ImageLoadError, image_header_size, walk_images
from ..base.paths import decode_utf8_text
from .trainset import Sample, TrainSet, image_tensor, select_classes

# preprocess.py's records in its output folder (align/preprocessing.py writes them; training reads them)
REPORT_NAME = "preprocess_report.tsv"
REPORT_HEADER = ["path", "status", "detail"]
JOURNAL_NAME = ".preprocess_journal.tsv"   # a run's fallback rows as they happen; gone when a run completes
FALLBACK = "fallback"
FALLBACK_REASON = "fallback crop: the detector missed this face, preprocess.py aligned it with mean landmarks"


def report_rows(path: Path, header: bool) -> list[list[str]]:
    """The [path, status, detail] rows of preprocess.py's report (`header`: its first line must be the
    report's header) or of its journal; [] when the file is absent. A report that is not preprocess.py's is
    a ValueError naming the file and line. Of a journal only the lines a newline ends count: a killed run
    may have cut its last one."""
    if not path.exists():
        return []
    if not path.is_file():  # read unasked in a training folder: a FIFO of that name would block for ever
        raise ValueError(f"{path}: not a regular file, so not a report of preprocess.py; remove it")
    data = path.read_bytes()
    text = decode_utf8_text(data if header else data[:data.rfind(b"\n") + 1], path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    rows = []
    try:
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        raise ValueError(f"{path}:{reader.line_num}: not a report of preprocess.py ({exc})") from None
    if header:
        if not rows or rows[0][1] != REPORT_HEADER:
            first, expected = text.split("\n", 1)[0].rstrip("\r"), "\t".join(REPORT_HEADER)
            raise ValueError(f"{path}:1: not a report of preprocess.py (first line {first[:60]!r}, expected "
                             f"{expected!r}): it names the crops that must never train; remove or rename a file "
                             "of that name that preprocess.py did not write")
        rows = rows[1:]
    for number, row in rows:
        if len(row) != 3 and row:
            raise ValueError(f"{path}:{number}: not a row of preprocess.py's report (path, status and detail, "
                             f"tab separated): {len(row)} fields")
    return [row for _, row in rows if row]


def fallback_crops(root: str | Path) -> set[str]:
    """The relative paths (`<identity>/<file>`) that preprocess.py aligned with mean landmarks, from the
    `fallback` rows of `root/preprocess_report.tsv` and of the journal a killed run leaves beside it."""
    root = Path(root)
    rows = report_rows(root / REPORT_NAME, header=True) + report_rows(root / JOURNAL_NAME, header=False)
    return {row[0] for row in rows if row[1] == FALLBACK}


def scan_image_folder(root: str | Path, exclude: Sequence[str] = (), min_images_per_class: int = 0,
                      leave_out: Collection[str] = ()) -> tuple[list[str], list[Sample]]:
    """`root/<identity>/<file>` -> (sorted class names, samples in (class, file name) order), by
    `images.walk_images` (identity folders reached through a symbolic link count, as in preprocessing).
    Hidden entries, non-images, files at other depths and the relative paths in `leave_out` are ignored
    (before classes are counted: an identity left with no image is no class)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training set not found: {root} is not a folder")
    names, paths, labels = [], [], []
    for relative in walk_images(root, max_depth=2).images:
        parts = relative.split("/")
        if len(parts) != 2 or relative in leave_out:
            continue
        if not names or names[-1] != parts[0]:  # the walk lists each folder's files together
            names.append(parts[0])
        paths.append(os.path.join(root, *parts))
        labels.append(len(names) - 1)
    if not paths:
        raise ValueError(f"training set {root} holds no images in <identity>/<file> folders")
    classes, rows, new_labels = select_classes(np.array(labels), names, exclude, min_images_per_class, root)
    return classes, [Sample(paths[r], int(label)) for r, label in zip(rows, new_labels)]


def _header_size(path: str) -> tuple[int, int] | str:
    """(height, width) from the file's header, or the reason it cannot be read."""
    try:
        return image_header_size(path)
    except ImageLoadError as exc:
        return f"cannot read its header ({exc.reason})"


class ImageFolderTrainSet(TrainSet):
    """Aligned faces in `root/<identity>/<file>`, less the fallback crops preprocess.py recorded there
    (`fallback_crops`): `left_out` names them, `check_notes` counts them for the console."""

    def __init__(self, root: str | Path, exclude: Sequence[str] = (), min_images_per_class: int = 0,
                 flip: bool = False, seed: int = 0):
        self.root = Path(root)
        fallbacks = fallback_crops(root) if self.root.is_dir() else set()
        self.classes, self.samples = scan_image_folder(root, exclude, min_images_per_class, leave_out=fallbacks)
        present = [relative for relative in sorted(fallbacks)
                   if relative.count("/") == 1 and os.path.lexists(self.root / relative)]
        self.left_out = [(str(self.root / relative), FALLBACK_REASON) for relative in present]
        self.flip = flip
        self.seed = seed

    def check_notes(self) -> list[str]:
        if not self.left_out:
            return []
        return [f"{len(self.left_out)} fallback crops left out: faces the detector missed, which preprocess.py "
                f"aligned with mean landmarks (status 'fallback' in {self.root / REPORT_NAME}); they never train"]

    def __len__(self) -> int:
        return len(self.samples)

    def label(self, index: int) -> int:
        return self.samples[index].label

    def load(self, index: int) -> torch.Tensor:
        return image_tensor(self.samples[index].path)

    def describe(self, index: int) -> str:
        return str(self.samples[index].path)

    def header_sizes(self) -> tuple[np.ndarray, dict[int, str]]:
        """Every file's header read (8 threads: on a cold or network disk the time is the reads)."""
        paths = [s.path for s in self.samples]
        chunks = [paths[i:i + 256] for i in range(0, len(paths), 256)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = [r for chunk in pool.map(lambda c: [_header_size(p) for p in c], chunks) for r in chunk]
        sizes = np.full((len(paths), 2), -1, dtype=np.int64)
        unreadable = {}
        for index, result in enumerate(results):
            if isinstance(result, str):
                unreadable[index] = result
            else:
                sizes[index] = result
        return sizes, unreadable
