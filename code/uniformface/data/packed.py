"""A packed training set: every aligned face decoded once, stored raw, read back with no decoding.

Layout of a `NAME.packed/` folder (written by `code/pack_dataset.py`, atomically: a temporary folder
renamed into place):
    images.u8    uint8, C order, shape (N, 3, H, W): RGB pixels exactly as the source set's items give them
    labels.npy   int64 (N,): class index of each row
    meta.json    {"format": "uniformface-packed", "version": 1, "shape": [N, 3, H, W],
                  "classes": [...] (names, index = label), "source": "...", "skipped": [[item, reason], ...]}
`datasets.open_train_set` takes a folder whose name ends in `.packed`, or any folder holding `meta.json` and
`images.u8`. Undecodable source images, and images whose size differs from the first one's, are left out
at pack time and listed in `skipped`; classes stay as the source had them (so labels match the source).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .folder import FALLBACK_REASON
from .trainset import TrainSet, select_classes

SUFFIX = ".packed"
IMAGES_FILE, LABELS_FILE, META_FILE = "images.u8", "labels.npy", "meta.json"
FORMAT, VERSION = "uniformface-packed", 1


def is_packed(path: str | Path) -> bool:
    path = Path(path)
    return path.suffix == SUFFIX or (path / META_FILE).is_file() and (path / IMAGES_FILE).is_file()


def packed_path(output: str | Path) -> Path:
    """`--output PREFIX` -> `PREFIX.packed` (kept as is when it already ends so)."""
    output = Path(output)
    return output if output.suffix == SUFFIX else output.with_name(output.name + SUFFIX)


class PackedTrainSet(TrainSet):
    """A `NAME.packed/` folder with the interface of `folder.ImageFolderTrainSet`: items keyed by
    (epoch, index), flip a function of (seed, epoch, index), uint8 (3,H,W) RGB tensors. `exclude` and
    `min_images_per_class` act on the stored class names as they do on identity folders.
    The memory map is opened on first use in each process."""

    def __init__(self, root: str | Path, exclude: Sequence[str] = (), min_images_per_class: int = 0,
                 flip: bool = False, seed: int = 0):
        self.root = Path(root)
        meta_path = self.root / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.root}: not a packed dataset ({META_FILE} is missing; "
                                    "write one with code/pack_dataset.py)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError as exc:  # not UTF-8, or not JSON
            raise ValueError(f"{meta_path}: not the JSON that code/pack_dataset.py writes ({exc})") from None
        if not isinstance(meta, dict):
            meta = {}
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r} version {meta.get('version')!r}, "
                             f"expected {FORMAT!r} version {VERSION}")
        try:
            self.shape = tuple(int(v) for v in meta["shape"])
            names = [str(name) for name in meta["classes"]]
            skipped = [tuple(str(part) for part in item) for item in meta.get("skipped", [])]
        except (KeyError, TypeError, ValueError) as exc:
            what = exc if isinstance(exc, KeyError) else "'shape', 'classes' or 'skipped'"
            raise ValueError(f"{meta_path}: no usable {what} (code/pack_dataset.py writes a shape [N, 3, H, W], "
                             "the class names and a list of skipped items)") from None
        if len(self.shape) != 4 or min(self.shape) < 0 or self.shape[1] != 3:
            raise ValueError(f"{meta_path}: shape {list(self.shape)} is not [N, 3, H, W]")
        images_path = self.root / IMAGES_FILE
        expected = int(np.prod(self.shape))
        actual = images_path.stat().st_size if images_path.is_file() else None
        if actual != expected:
            raise ValueError(f"{images_path}: {'missing' if actual is None else f'{actual} bytes'}, expected "
                             f"{expected} for shape {list(self.shape)} in {meta_path}")
        labels_path = self.root / LABELS_FILE
        try:
            labels = np.load(labels_path, allow_pickle=False)  # plain int64: never unpickled
        except (ValueError, EOFError) as exc:  # a pickle (object array or none at all), or not .npy
            raise ValueError(f"{labels_path}: not the int64 array that code/pack_dataset.py writes ({exc}); "
                             "nothing in it was unpickled") from None
        if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
            raise ValueError(f"{labels_path}: not the int64 array that code/pack_dataset.py writes "
                             f"({'an npz archive' if not isinstance(labels, np.ndarray) else labels.dtype})")
        if labels.shape != (self.shape[0],) or (labels.size and not 0 <= labels.min() <= labels.max() < len(names)):
            raise ValueError(f"{self.root / LABELS_FILE}: expected {self.shape[0]} labels in [0, {len(names)}), "
                             f"got shape {labels.shape}")
        self.classes, self.rows, self.labels = select_classes(labels, names, exclude, min_images_per_class,
                                                              self.root)
        self.skipped = skipped
        self.flip, self.seed = flip, seed
        self._images: np.memmap | None = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self, index: int) -> str:
        return f"{self.root} row {int(self.rows[index])}"

    def header_sizes(self) -> tuple[np.ndarray, dict[int, str]]:
        """Every row has the shape meta.json gives (pack() checked each image's size)."""
        return np.tile(np.asarray(self.shape[2:], dtype=np.int64), (len(self), 1)), {}

    def check_notes(self) -> list[str]:
        if not self.skipped:
            return []
        fallbacks = sum(1 for item in self.skipped if len(item) > 1 and item[1] == FALLBACK_REASON)
        others = len(self.skipped) - fallbacks
        if not fallbacks:
            why = "unreadable or of another size"
        else:
            why = f"{fallbacks} fallback crops of preprocess.py, which never train"
            why += f", {others} unreadable or of another size" if others else ""
        return [f"{len(self.skipped)} images of the source were left out when {self.root} was packed ({why}; "
                f"listed under 'skipped' in {self.root / META_FILE})"]

    def __getstate__(self):
        return {**self.__dict__, "_images": None, "_pid": None}

    def _pixels(self) -> np.memmap:
        if self._pid != os.getpid():
            self._images = np.memmap(self.root / IMAGES_FILE, dtype=np.uint8, mode="r", shape=self.shape)
            self._pid = os.getpid()
        return self._images

    def label(self, index: int) -> int:
        return int(self.labels[index])

    def load(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self._pixels()[self.rows[index]]))


@dataclass
class PackSummary:
    output: Path
    shape: tuple[int, ...]
    skipped: list[tuple[str, str]] = field(default_factory=list)    # met and not packed: unreadable, odd size
    left_out: list[tuple[str, str]] = field(default_factory=list)   # never items of the source (fallback crops)
    notes: list[str] = field(default_factory=list)                  # the source's own notes, for the console

    def line(self) -> str:
        n, _, h, w = self.shape
        return (f"packed {n} images of {h}x{w} into {self.output}; {len(self.skipped)} skipped"
                + (f"; {len(self.left_out)} fallback crops left out" if self.left_out else ""))


def _as_list(batch):
    return batch


def packed_output(output: str | Path, overwrite: bool = False) -> Path:
    """`packed_path(output)`, refused (FileExistsError) when it exists and not `overwrite`."""
    final = packed_path(output)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists (pass overwrite=True / --overwrite to replace it)")
    return final


def write_packed(dataset: Dataset, output: str | Path, source: str | Path, workers: int = 0,
                 overwrite: bool = False, progress: bool = True) -> PackSummary:
    """Decode every item of `dataset` (a training set read from `source`, named in meta.json) into
    `PREFIX.packed` (`datasets.pack` opens the source and calls this). meta.json's `skipped` lists what the
    source left out (`TrainSet.left_out`: fallback crops) and what could not be packed."""
    from tqdm import tqdm

    final = packed_output(output, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        labels, skipped, image_shape = [], [], None
        loader = DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=_as_list)
        with open(tmp / IMAGES_FILE, "wb") as out, \
                tqdm(total=len(dataset), desc=f"pack {final.name}", unit="img", disable=not progress,
                     dynamic_ncols=True) as bar:
            index = 0
            for batch in loader:
                for image, label in batch:
                    if image is None:
                        skipped.append((dataset.describe(index), "cannot be decoded"))
                    elif image_shape is not None and tuple(image.shape) != image_shape:
                        skipped.append((dataset.describe(index), f"size {image.shape[1]}x{image.shape[2]} differs "
                                        f"from the first image's {image_shape[1]}x{image_shape[2]}"))
                    else:
                        image_shape = tuple(image.shape)
                        out.write(image.contiguous().numpy().tobytes())
                        labels.append(label)
                    index += 1
                bar.update(len(batch))
            out.flush()
            os.fsync(out.fileno())
        if not labels:
            raise ValueError(f"{source}: no image could be packed ({len(skipped)} skipped)")
        shape = (len(labels), *image_shape)
        np.save(tmp / LABELS_FILE, np.asarray(labels, dtype=np.int64))
        left_out = list(dataset.left_out)
        meta = {"format": FORMAT, "version": VERSION, "shape": list(shape), "classes": list(dataset.classes),
                "source": str(source), "skipped": [list(item) for item in left_out + skipped]}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    notes = dataset.check_notes() if isinstance(dataset, TrainSet) else []
    return PackSummary(final, shape, skipped, left_out, notes)
