"""An aligned image folder as a training set: `root/<identity>/<file>`, one class per identity folder."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..base.images import ImageLoadError, image_header_size, walk_images
from .trainset import Sample, TrainSet, image_tensor, select_classes


def scan_image_folder(root: str | Path, exclude: Sequence[str] = (), min_images_per_class: int = 0
                      ) -> tuple[list[str], list[Sample]]:
    """`root/<identity>/<file>` -> (sorted class names, samples in (class, file name) order), by
    `images.walk_images` (identity folders reached through a symbolic link count, as in preprocessing).
    Hidden entries, non-images and files at other depths are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training set not found: {root} is not a folder")
    names, paths, labels = [], [], []
    for relative in walk_images(root, max_depth=2).images:
        parts = relative.split("/")
        if len(parts) != 2:
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
    """Aligned faces in `root/<identity>/<file>`."""

    def __init__(self, root: str | Path, exclude: Sequence[str] = (), min_images_per_class: int = 0,
                 flip: bool = False, seed: int = 0):
        self.root = Path(root)
        self.classes, self.samples = scan_image_folder(root, exclude, min_images_per_class)
        self.flip = flip
        self.seed = seed

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
