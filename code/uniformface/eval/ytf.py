"""YouTube Faces (Wolf, Hassner and Maoz, CVPR 2011) video-pair verification, as the UniformFace paper
(Duan et al., CVPR 2019, 97.70 %) and SphereFace (Liu et al., CVPR 2017, 95.0 %) report it
(docs/DESIGN.md §7.7, §8.12):

* `splits.txt` read as people have it: five comma-separated fields a pair (split, pair number, first name,
  second name, is same) with no header, or a header naming the columns (the published one has a sixth,
  `is physically the same, is the same`); the 5,000 pairs and 10 splits exactly as listed, each split a
  consecutive block of the file;
* a video is the folder `<name>/<video number>` of its aligned frames (`aligned_images_DB` aligned again by
  preprocess.py with the project's crop); its feature is the mean over its frames of each frame's feature
  formed with the mirror as the protocol does (sphereface [f, f_flip]; insightface normalise(f + f_flip)),
  all frames by default or `frames_per_video` of them, evenly spaced in frame order;
* the LFW protocol's 10-fold machinery (`protocols.kfold_accuracy`) with each split as a fold:
  for split k, the mean feature and the threshold come from the other nine.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

import numpy as np
import torch

from .embedding import ImageFiles, extract_features
from .evaluate import pair_features
from .feature_cache import cached_features, chunked, file_stamp, listing_digest, model_identity
from ..base.images import is_image_name
from ..base.paths import decimal, first_and_more, is_decimal, read_utf8_text, shown
from .results import beside_results, prepare_results, roc_path, update_results
from .trained_network import load_embedder
from .protocols import check_protocol, fold_ids, kfold_accuracy, roc_summary

# The columns read from splits.txt; the published file has also a pair number (and others may follow).
SPLIT, FIRST, SECOND, SAME = "split number", "first name", "second name", "is same"
REQUIRED_COLUMNS = (SPLIT, FIRST, SECOND, SAME)
# The label's other name, in the header with a sixth column `is physically the same, is the same`.
SAME_OTHER_NAME = "is the same"
# A file with no header: these five fields a line (the public copies' layout).
HEADERLESS_COLUMNS = (SPLIT, "pair number", FIRST, SECOND, SAME)
# Frames per chunk of the feature cache: a killed run loses at most this much work.
CHUNK_FRAMES = 16384


@dataclass(frozen=True)
class VideoPair:
    left: str        # "<name>/<video number>", e.g. "Aaron_Eckhart/0": a folder under the frames root
    right: str
    is_same: bool
    split: int       # 1-based, as in the file
    line: int        # line number in splits.txt


def _decoded_lines(path: Path) -> list[str]:
    return [line.rstrip("\r") for line in read_utf8_text(path).split("\n")]   # numbered as editors do: only "\n" ends a line


def _video_name(value: str, where: str, column: str) -> str:
    name = value.strip().replace("\\", "/")
    parts = PurePosixPath(name).parts
    if len(parts) != 2 or name.startswith("/") or any(p in (".", "..") or not p.strip() for p in parts):
        raise ValueError(f"{where}: {column} {value.strip()!r} is not '<name>/<video number>' (e.g. Aaron_Eckhart/0)")
    return name


def _header_columns(path: Path, line_no: int, header: str) -> tuple[list[str], dict[str, int], str]:
    """(the header's column names, {required column: position}, the label column's name) of a header line:
    the columns found by name, case and spaces around them ignored; the label from 'is same', or from
    'is the same' (the published six-column header). Anything else is a ValueError naming the line."""
    columns = [c.strip().lower() for c in header.split(",")]
    label = SAME_OTHER_NAME if SAME_OTHER_NAME in columns and SAME not in columns else SAME
    missing = [repr(c) + (f" (or {SAME_OTHER_NAME!r})" if c == SAME else "") for c in REQUIRED_COLUMNS
               if c not in columns and (c != SAME or label == SAME)]
    if missing or len(set(columns)) != len(columns):
        problem = f"no column {', '.join(missing)}" if missing else "a column name repeats"
        raise ValueError(f"{path}:{line_no}: expected a header naming the columns '{', '.join(REQUIRED_COLUMNS)}' "
                         f"(comma-separated), {problem}; or no header and five fields a line "
                         f"({', '.join(HEADERLESS_COLUMNS)}): {header!r}")
    return columns, {SPLIT: columns.index(SPLIT), FIRST: columns.index(FIRST), SECOND: columns.index(SECOND),
                     SAME: columns.index(label)}, label


def read_splits(path: str | Path) -> list[VideoPair]:
    """Every pair of a YouTube Faces `splits.txt`, in file order, in either layout people have:
    - no header (the first non-blank line starts with a number): five comma-separated fields a line,
      'split number, pair number, first name, second name, is same';
    - a header of comma-separated column names: 'split number', 'first name', 'second name' and 'is same'
      (or 'is the same', as in the header with a sixth column 'is physically the same, is the same') are
      found by name (case and spaces around them ignored), any others are ignored; each following line has
      as many fields as the header.
    Lines may end in CRLF; split numbers are positive integers, the label is 0 or 1. The splits must be
    listed in order 1..K, each a consecutive block, all of one size (the first N mod K one pair longer), as
    the published file is (10 splits of 500): they are then the folds of `kfold_accuracy`. A malformed line
    is a ValueError naming the file and line."""
    path = Path(path)
    lines = _decoded_lines(path)
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise ValueError(f"{path}: empty file, expected pairs of five fields ({', '.join(HEADERLESS_COLUMNS)}), "
                         f"with or without a header line naming the columns")
    header_line, header = numbered[0]
    if is_decimal(header.split(",")[0].strip()):  # a pair, not a column name: no header
        columns, label = list(HEADERLESS_COLUMNS), SAME
        at = {SPLIT: 0, FIRST: 2, SECOND: 3, SAME: 4}
        layout, rows = f"five comma-separated fields ({', '.join(HEADERLESS_COLUMNS)})", numbered
    else:
        columns, at, label = _header_columns(path, header_line, header)
        layout, rows = f"{len(columns)} comma-separated fields as the header names", numbered[1:]
    pairs = []
    for line_no, line in rows:
        where = f"{path}:{line_no}"
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(columns):
            raise ValueError(f"{where}: expected {layout}, found {len(fields)}: {line!r}")
        split, same = fields[at[SPLIT]], fields[at[SAME]]
        number = decimal(split, 18)
        if not is_decimal(split) or number == 0:
            raise ValueError(f"{where}: split number {shown(split, 40)} is not a positive integer: "
                             f"{shown(line, 120)}")
        if number is None:
            raise ValueError(f"{where}: split number {shown(split, 40)} is larger than any file's count of "
                             f"pairs: {shown(line, 120)}")
        if same not in ("0", "1"):
            raise ValueError(f"{where}: {label!r} is {same!r}, expected 0 or 1: {line!r}")
        pairs.append(VideoPair(_video_name(fields[at[FIRST]], where, FIRST),
                               _video_name(fields[at[SECOND]], where, SECOND), same == "1", number, line_no))
    if not pairs:
        raise ValueError(f"{path}:{header_line}: a header but no pairs")
    n_splits = max(p.split for p in pairs)
    if n_splits > len(pairs):  # more splits than pairs cannot be the folds; also bounds the folds made below
        first = next(p for p in pairs if p.split == n_splits)
        raise ValueError(f"{path}:{first.line}: split {n_splits}, but the file holds only {len(pairs)} pairs")
    if n_splits < 2:
        raise ValueError(f"{path}: all pairs are in split {n_splits}; the protocol needs at least 2 splits")
    expected = fold_ids(len(pairs), n_splits) + 1
    for pair, split in zip(pairs, expected):
        if pair.split != split:
            sizes = np.bincount([p.split for p in pairs], minlength=n_splits + 1)[1:]
            raise ValueError(f"{path}:{pair.line}: split {pair.split} where split {split} was expected: the splits "
                             f"must be listed in order 1..{n_splits}, each a consecutive block of one size "
                             f"(as the published file: 10 splits of 500 pairs); here the sizes are "
                             f"{', '.join(map(str, sizes))}")
    return pairs


def natural_key(name: str) -> list:
    """Frame names in the order of the video: numbers compared as numbers
    (`aligned_detect_0.99.jpg` before `aligned_detect_0.100.jpg`)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"([0-9]+)", name)]


def video_frames(root: str | Path, video: str) -> list[str]:
    """The image files directly in `root/video` (hidden files skipped), as paths relative to `root`, in
    frame order (`natural_key`); [] when the folder is absent or holds none."""
    folder = Path(root) / video
    try:
        names = [e.name for e in os.scandir(folder) if not e.name.startswith(".") and e.is_file()
                 and is_image_name(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [f"{video}/{n}" for n in sorted(names, key=natural_key)]


def select_frames(frames: Sequence[str], limit: int | None) -> list[str]:
    """All frames, or `limit` of them evenly spaced from the first: frame floor(i * n / limit) for
    i = 0 .. limit - 1 (the same frames on every run)."""
    if limit is None or len(frames) <= limit:
        return list(frames)
    return [frames[i * len(frames) // limit] for i in range(limit)]


def unique_videos(pairs: Sequence[VideoPair]) -> list[str]:
    """Every video the pairs use, once, in order of first use."""
    return list(dict.fromkeys(v for p in pairs for v in (p.left, p.right)))


def video_features(embed: Callable[[torch.Tensor], torch.Tensor], root: str | Path, frames: Sequence[Sequence[str]],
                   protocol: str, input_size: Sequence[int] | None, batch_size: int, num_workers: int, device: str
                   ) -> np.ndarray:
    """Per video (a list of frame paths), the mean over its frames of the frame feature formed with the
    mirror as `protocol` does (`embedding.extract_features`), float64."""
    flat = [f for video in frames for f in video]
    features = extract_features(embed, ImageFiles(root, flat, input_size), protocol, batch_size, num_workers, device,
                                progress=False)
    counts = np.array([len(video) for video in frames])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.add.reduceat(features, starts, axis=0) / counts[:, None]


def _missing_error(missing: Sequence[str], splits_path, root) -> FileNotFoundError:
    return FileNotFoundError(f"{len(missing)} video(s) of {splits_path} have no frames under {root}: "
                             f"{first_and_more(missing)} "
                             "(pass --allow_missing to count their pairs as wrong)")


def evaluate_ytf(embed: Callable[[torch.Tensor], torch.Tensor], root: str | Path, splits_path: str | Path,
                 protocol: str = "sphereface", frames_per_video: int | None = None, allow_missing: bool = False,
                 input_size: Sequence[int] | None = None, batch_size: int = 128, num_workers: int = 2,
                 device: str = "cpu", progress: bool = True, roc_png: str | Path | None = None,
                 label: str | None = None, cache_path: str | Path | None = None, cache_key: dict | None = None
                 ) -> dict:
    """Video-pair verification accuracy over `splits.txt`, one fold per split. A video with no frame under
    `root` is an error listing every such video; with `allow_missing` its pairs keep their place and
    count as wrong. With `cache_path`, the video features are kept there (resumable) under `cache_key`
    (the model's identity) and reused by a later run of the same key."""
    check_protocol(protocol)
    if frames_per_video is not None and (not isinstance(frames_per_video, int) or frames_per_video < 1):
        raise ValueError(f"frames_per_video must be a positive integer or None (all frames), got {frames_per_video!r}")
    pairs = read_splits(splits_path)
    videos = unique_videos(pairs)
    frames = {v: select_frames(video_frames(root, v), frames_per_video) for v in videos}
    missing = sorted(v for v in videos if not frames[v])
    if missing and not allow_missing:
        raise _missing_error(missing, splits_path, root)
    present = [v for v in videos if frames[v]]
    if not present:
        raise FileNotFoundError(f"none of the {len(videos)} videos of {splits_path} has frames under {root}")

    groups = chunked([len(frames[v]) for v in present], CHUNK_FRAMES)
    chunks = [[frames[present[i]] for i in group] for group in groups]
    key = {**(cache_key or {}), "benchmark": "ytf", "protocol": protocol,
           "input_size": list(input_size) if input_size is not None else None,
           "items": listing_digest(f"{v}\t{f}\t{file_stamp(Path(root) / f)}" for v in present for f in frames[v])}
    features, cache_note = cached_features(
        cache_path, key, chunks, [len(c) for c in chunks],
        lambda chunk: video_features(embed, root, chunk, protocol, input_size, batch_size, num_workers, device),
        sizes=[sum(len(video) for video in c) for c in chunks], progress=progress, desc="YTF frames", unit="frame")

    left, right, usable = pair_features(features, present, pairs)
    idx = np.flatnonzero(usable)
    is_same = np.array([p.is_same for p in pairs])
    n_splits = pairs[-1].split
    result = kfold_accuracy(left, right, is_same, protocol=protocol, n_folds=n_splits,
                            invalid=~usable if (~usable).any() else None).to_dict()
    result.update(roc_summary(left[idx], right[idx], is_same[idx], protocol, roc_png, label, "YouTube Faces ROC"))
    result.update(n_pairs=len(pairs), n_missing_pairs=int((~usable).sum()), missing_videos=missing,
                  n_videos=len(present), n_frames=int(sum(len(frames[v]) for v in present)),
                  frames_per_video=frames_per_video, **cache_note)
    return result


def evaluate_model_on_ytf(model_path: str | Path | None, dataset: str | Path, splits_path: str | Path,
                          results_path: str | Path | None, protocol: str = "sphereface",
                          frames_per_video: int | None = None, allow_missing: bool = False,
                          baseline: str | None = None, seed: int = 0, overwrite: bool = False,
                          **common) -> tuple[str, dict]:
    """What `test.py --benchmark ytf` does: evaluate the model (or a baseline) on `splits_path`, keep the
    video features beside `results_path` (`ytf_features.npy`), save the ROC figure (`ytf_roc.png`) and merge
    the results into the file's "ytf" section (everything else kept). `common`: batch_size, num_workers,
    device, progress. Returns (label, the YTF results)."""
    cache_key = model_identity(model_path, baseline, seed)  # before loading: a file replaced later cannot mix in
    embed, label, input_size, _ = load_embedder(model_path, baseline, seed, common.get("device", "cpu"))
    prepare_results(results_path, overwrite, benchmark="ytf")
    result = evaluate_ytf(embed, dataset, splits_path, protocol=protocol, frames_per_video=frames_per_video,
                          allow_missing=allow_missing, input_size=input_size,
                          roc_png=roc_path(results_path, "ytf") if results_path else None, label=label,
                          cache_path=beside_results(results_path, "ytf", "_features.npy") if results_path else None,
                          cache_key=cache_key, **common)
    result.update(model_path=str(model_path) if model_path else None, dataset=str(dataset),
                  pairs_path=str(splits_path), evaluated=label)
    if results_path is not None:
        update_results(results_path, overwrite, sections={"ytf": result})
    return label, result
