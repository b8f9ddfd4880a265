"""Training sets. `base` holds what they share (the `TrainSet` class, class selection, the image checks,
the collate functions, the batch order); beside each other, the three formats: `folder` (an aligned image
folder), `recordio` (insightface's `.rec` + `.idx`) and `packed` (decoded once, memory-mapped); here,
above them, the factory that picks the format of a path and the training loop's loader.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from torch.utils.data import DataLoader, Sampler

from .trainset import (GlobalBatchSampler, ImageCheck, ReportingView, Sample, TrainSet, check_images,
                       collate_report_broken, collate_skip_broken, image_tensor, mix_seed, select_classes)
from .folder import ImageFolderTrainSet, scan_image_folder
from .packed import PackedTrainSet, PackSummary, is_packed, packed_output, packed_path, write_packed
from .recordio import RecordIOError, RecordTrainSet, write_record_file

__all__ = ["GlobalBatchSampler", "ImageCheck", "ImageFolderTrainSet", "PackSummary", "PackedTrainSet",
           "RecordIOError", "RecordTrainSet", "ReportingView", "Sample", "TrainSet", "check_images",
           "collate_report_broken", "collate_skip_broken", "image_tensor", "is_packed", "mix_seed",
           "open_train_set", "pack", "packed_path", "scan_image_folder", "select_classes", "training_loader",
           "write_record_file"]


def open_train_set(path: str | Path, **kwargs) -> TrainSet:
    """The public entry point (docs/REPRODUCING.md, "Training data formats"): a training set whose item is
    (uint8 (3,H,W) RGB tensor, label), over
    - `X.rec` (insightface RecordIO, `X.idx` beside it), or a folder holding `train.rec` and no identity
      folders (insightface's download layout): `RecordTrainSet`;
    - `X.packed/` (or a folder with `meta.json` + `images.u8`), from `code/pack_dataset.py`:
      `PackedTrainSet`;
    - otherwise an aligned image folder `<identity>/<file>`: `ImageFolderTrainSet`.
    Keyword arguments (exclude, min_images_per_class, flip, seed) mean the same for all three."""
    path = Path(path)
    if path.suffix == ".rec":
        return RecordTrainSet(path, **kwargs)
    if is_packed(path):
        return PackedTrainSet(path, **kwargs)
    if (path / "train.rec").is_file():
        with os.scandir(path) as entries:
            identity_folders = any(entry.is_dir() for entry in entries)
        if not identity_folders:
            return RecordTrainSet(path / "train.rec", **kwargs)
    return ImageFolderTrainSet(path, **kwargs)


def training_loader(dataset: TrainSet, sampler: Sampler, num_workers: int, pin_memory: bool = False) -> DataLoader:
    """The training loop's loader: `sampler`'s batches of (image, label) with unusable images dropped and
    named (`ReportingView` + `collate_report_broken`), worker processes kept for the whole run."""
    return DataLoader(ReportingView(dataset), batch_sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_report_broken, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers else None)


def pack(source: str | Path, output: str | Path, exclude: Sequence[str] = (), min_images_per_class: int = 0,
         workers: int = 0, overwrite: bool = False, progress: bool = True) -> PackSummary:
    """Decode every image of `source` (anything `open_train_set` reads) into `PREFIX.packed`
    (`packed.write_packed`); an existing output is refused before the source is read, unless `overwrite`."""
    final = packed_output(output, overwrite)
    dataset = open_train_set(source, exclude=exclude, min_images_per_class=min_images_per_class)
    return write_packed(dataset, final, source, workers=workers, overwrite=overwrite, progress=progress)
