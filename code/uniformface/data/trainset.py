"""What every training set shares: the `TrainSet` base class, class selection, the per-item random
streams, the image checks made before training, the collate functions and the deterministic batch order.

Labels are positions in the SORTED class names (the earlier port iterated a `set`, so ids changed between
runs). Augmentation randomness derives from (seed, epoch, index) only, so the number of loader workers
and a resume change nothing.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..base.images import decode_rgb


def image_tensor(source: str | Path | bytes, name: str | None = None) -> torch.Tensor:
    """A file (or encoded bytes) -> uint8 RGB tensor (3, H, W), decoded by `images.decode_rgb` as on every
    other path. Raises ValueError (`images.ImageLoadError`) naming the file (or `name`)."""
    return torch.from_numpy(decode_rgb(source, name=name)).permute(2, 0, 1).contiguous()


def mix_seed(*values: int) -> int:
    """A 63-bit hash of integers (splitmix64 steps): independent streams per (seed, epoch, index)."""
    state = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for value in values:
        state = (state ^ (int(value) & mask)) * 0xBF58476D1CE4E5B9 & mask
        state = (state ^ (state >> 27)) * 0x94D049BB133111EB & mask
        state ^= state >> 31
    return state >> 1


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


def select_classes(labels: np.ndarray, names: Sequence[str], exclude: Sequence[str] = (),
                   min_images_per_class: int = 0, source: str | Path = "training set"
                   ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Drop excluded names and classes with fewer than `min_images_per_class` images, renumbering the
    rest in their (sorted) order: the same rule for folders, `.rec` files and packed sets.
    Returns (kept class names, kept sample rows, their new labels); no sample left is an error."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(names))
    excluded = set(exclude)
    keep = np.array([name not in excluded and counts[c] >= min_images_per_class for c, name in enumerate(names)],
                    dtype=bool)
    new_label = np.cumsum(keep) - 1
    rows = np.flatnonzero(keep[labels])
    if rows.size == 0:
        at_least = f" with at least {min_images_per_class} images" if min_images_per_class else ""
        raise ValueError(f"training set {source} holds no images in its classes{at_least}")
    return [names[c] for c in np.flatnonzero(keep)], rows, new_label[labels[rows]].astype(np.int64)


class TrainSet(Dataset):
    """What every training set shares: `classes` (sorted names; label = position), items keyed by
    (epoch, index) so that the random horizontal flip is a function of (seed, epoch, index) (a plain
    int index means epoch 0), and an unusable image yields `(None, label)`, which
    `collate_skip_broken` drops and counts. Unusable: undecodable, listed in `skip` (index -> reason,
    from `check_images`), or not of `expected_size` (height, width) when that is set.
    Subclasses give `label(index)`, `load(index)` and `describe(index)`, and `header_sizes()` where the
    sizes can be had without decoding. `left_out` names the source's images that are no items at all, with
    why (an image folder's fallback crops); a packed copy records them."""

    classes: list[str]
    flip: bool = False
    seed: int = 0
    expected_size: tuple[int, int] | None = None
    skip: dict[int, str] = {}
    left_out: list[tuple[str, str]] = []

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label(self, index: int) -> int:
        raise NotImplementedError

    def load(self, index: int) -> torch.Tensor:
        """uint8 (3, H, W) RGB; raises ValueError when the image cannot be decoded."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """The item's name in messages (its file, or container and record)."""
        return f"item {index}"

    def header_sizes(self) -> tuple[np.ndarray, dict[int, str]] | None:
        """(sizes (N, 2) int64 (height, width), -1 where unreadable; {index: why unreadable}) without
        decoding any image, or None when this kind of set cannot tell sizes that cheaply."""
        return None

    def check_notes(self) -> list[str]:
        """Lines for the console beside `check_images`' warnings (e.g. what a packed set left out)."""
        return []

    def item(self, key) -> tuple[torch.Tensor | None, int, str | None]:
        """(image or None, label, None or why the image is unusable, naming it)."""
        epoch, index = key if isinstance(key, tuple) else (0, key)
        label = self.label(index)
        if index in self.skip:
            return None, label, f"{self.describe(index)}: {self.skip[index]}"
        try:
            image = self.load(index)
        except ValueError as exc:
            return None, label, str(exc)
        if self.expected_size is not None and tuple(image.shape[1:]) != tuple(self.expected_size):
            return None, label, (f"{self.describe(index)}: {image.shape[1]}x{image.shape[2]}, not the "
                                 f"input_size {self.expected_size[0]}x{self.expected_size[1]}")
        if self.flip and mix_seed(self.seed, epoch, index) & 1:
            image = image.flip(-1)
        return image, label, None

    def __getitem__(self, key):
        image, label, _ = self.item(key)
        return image, label


class ReportingView(Dataset):
    """`dataset.item(key)` as the item (image or None, label, problem or None): for `collate_report_broken`,
    so that the training loop can name what it skipped."""

    def __init__(self, dataset: TrainSet):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        return self.dataset.item(key)


def _stack(good: list) -> tuple[torch.Tensor, torch.Tensor]:
    if not good:
        return torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    return torch.stack([img for img, _ in good]), torch.tensor([lab for _, lab in good], dtype=torch.long)


def collate_skip_broken(batch):
    """Stack (image, label) items, dropping undecodable ones; returns (images, labels, n_broken)."""
    good = [(img, lab) for img, lab in batch if img is not None]
    return (*_stack(good), len(batch) - len(good))


def collate_report_broken(batch):
    """Stack the (image, label, problem) items of a `ReportingView`, dropping unusable ones; returns
    (images, labels, [problem of each dropped item])."""
    good = [(img, lab) for img, lab, _ in batch if img is not None]
    return (*_stack(good), [problem for img, _, problem in batch if img is None])


@dataclass
class ImageCheck:
    """What `check_images` found, for the console."""
    total: int
    header_checked: bool                     # False: sizes only from a few decoded images (RecordIO)
    unreadable: list[str] = field(default_factory=list)  # "name: why", in index order
    wrong_size: list[str] = field(default_factory=list)  # "name: HxW"
    notes: list[str] = field(default_factory=list)       # e.g. images a packed set left out

    def lines(self, source: str | Path, first: int = 3) -> list[str]:
        out = []
        for what, items in (("cannot be read", self.unreadable),
                            ("have another size than input_size", self.wrong_size)):
            if items:
                shown = "; ".join(items[:first]) + ("; ..." if len(items) > first else "")
                out.append(f"warning: {len(items)} of the {self.total} training images in {source} {what} and are "
                           f"skipped: {shown}")
        return out + [f"note: {note}" for note in self.notes]


def check_images(dataset: TrainSet, input_size: Sequence[int], source: str | Path) -> ImageCheck:
    """Before training: every image's size (from file headers or a packed set's metadata; for RecordIO,
    the first decodable images, later ones when met). Unreadable and wrong-sized images go into
    `dataset.skip` (skipped by name when met, never decoded), and `dataset.expected_size` is set so that
    an image whose decoded size differs is skipped by name too. Raises ValueError naming `source` when
    no image is usable: none readable, or none of input_size (then the message gives the fix)."""
    height, width = (int(v) for v in input_size)
    dataset.expected_size = (height, width)
    found = dataset.header_sizes()
    check = ImageCheck(len(dataset), found is not None)
    check.notes += dataset.check_notes()
    if found is None:
        sizes = _first_decoded_sizes(dataset)
        if not sizes:
            return check  # nothing decodable among the first few: the training loop notices an empty epoch
        common = Counter(sizes).most_common(1)[0][0]
        if common != (height, width):
            raise ValueError(_size_message(source, common, (height, width)))
        return check
    sizes, unreadable = found
    readable = sizes[:, 0] >= 0
    right = readable & (sizes[:, 0] == height) & (sizes[:, 1] == width)
    if not readable.any():
        shown = "; ".join(f"{dataset.describe(i)}: {why}" for i, why in list(unreadable.items())[:3])
        raise ValueError(f"training set {source}: none of its {len(dataset)} image files can be read "
                         f"({len(unreadable)} unreadable, e.g. {shown}); point dataset.train at aligned faces")
    if not right.any():
        pairs = Counter(map(tuple, sizes[readable].tolist())).most_common(1)[0][0]
        raise ValueError(_size_message(source, pairs, (height, width)))
    skip = {}
    for index, why in unreadable.items():
        skip[index] = why
        check.unreadable.append(f"{dataset.describe(index)}: {why}")
    for index in np.flatnonzero(readable & ~right):
        h, w = sizes[index]
        skip[int(index)] = f"{h}x{w}, not the input_size {height}x{width}"
        check.wrong_size.append(f"{dataset.describe(int(index))}: {h}x{w}")
    dataset.skip = skip
    return check


def _first_decoded_sizes(dataset: TrainSet, count: int = 8) -> list[tuple[int, int]]:
    """(height, width) of the first `count` decodable images among the first 64."""
    sizes = []
    for index in range(min(len(dataset), 64)):
        try:
            image = dataset.load(index)
        except ValueError:
            continue
        sizes.append(tuple(int(v) for v in image.shape[1:]))
        if len(sizes) == count:
            break
    return sizes


def _size_message(source, found: tuple[int, int], wanted: tuple[int, int]) -> str:
    (height, width), (rows, cols) = found, wanted
    return (f"training images in {source} are {height}x{width} but input_size is [{rows}, {cols}]; set "
            f"--set input_size=[{height},{width}] or align with preprocess.py --output_size {rows}x{cols}")


class GlobalBatchSampler(Sampler):
    """Endless batches for iteration `start_iter` onward, as lists of (epoch, index) keys.

    Each epoch is a permutation seeded by (seed, epoch), cut into global batches (last partial batch
    dropped); rank r of `world_size` takes rows [r*b, (r+1)*b) of each global batch, so N processes see
    exactly the samples one process sees with the same global batch, and resuming at iteration i
    continues the same order."""

    def __init__(self, num_samples: int, global_batch: int, seed: int, start_iter: int = 0,
                 rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise ValueError(f"batch_size {global_batch} is not divisible by the {world_size} processes")
        if num_samples < global_batch:
            raise ValueError(f"the training set has {num_samples} images, fewer than one batch ({global_batch})")
        self.num_samples, self.global_batch, self.seed = num_samples, global_batch, seed
        self.start_iter, self.rank, self.world_size = start_iter, rank, world_size
        self.iters_per_epoch = num_samples // global_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        local = self.global_batch // self.world_size
        iteration = self.start_iter
        while True:
            epoch, step = divmod(iteration, self.iters_per_epoch)
            order = self.epoch_order(epoch)
            for step in range(step, self.iters_per_epoch):
                rows = order[step * self.global_batch + self.rank * local:][:local]
                yield [(epoch, int(i)) for i in rows]
                iteration += 1

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(mix_seed(self.seed, epoch, 0x5EED)).permutation(self.num_samples)

    def __len__(self) -> int:  # endless; DataLoader only needs this for progress estimates
        return 2 ** 62
