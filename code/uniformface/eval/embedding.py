"""Images -> network features: fitting aligned crops to the network's input, DataLoader-fed batched
inference with the horizontal flip the protocols use, and a whole folder's embeddings.

Crops of 112x112 (insightface `.bin` sets, `preprocess.py --output_size 112x112`) feed a 112x96 network by
dropping 8 columns each side: the 112x112 template is the 112x96 one shifted by +8 in x (docs/DESIGN.md §6.3;
`align.template`), so the central 96 columns ARE the 112x96 crop, with no resampling.
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..base.atomic import atomic_write_bytes, atomic_write_text
from ..align.crop import template
from ..data import image_tensor
from ..base.images import IMAGE_EXTENSIONS, walk_images
from ..nn.models import normalize_pixels
from ..base.paths import ensure_writable, first_and_more, refuse_overwrite
from ..base.registry import EMBEDDING_MODES
from .protocols import combine_flip

log = logging.getLogger(__name__)


def crop_offset(image_size: Sequence[int], input_size: Sequence[int]) -> tuple[int, int] | None:
    """(rows, cols) to drop at the top and left so that an aligned crop of `image_size` becomes one of
    `input_size`, read off the two alignment templates; None when the sizes have no such relation."""
    image_size, input_size = tuple(int(v) for v in image_size), tuple(int(v) for v in input_size)
    if image_size == input_size:
        return 0, 0
    try:
        shift = template(image_size) - template(input_size)
    except ValueError:
        return None
    left, top = np.rint(shift[0]).astype(int)
    if not np.allclose(shift, [left, top], atol=1e-9) or left < 0 or top < 0:  # a whole-pixel shift only
        return None
    left, top = int(left), int(top)
    if top + input_size[0] > image_size[0] or left + input_size[1] > image_size[1]:
        return None
    return top, left


def fit_to_input(image: torch.Tensor, input_size: Sequence[int] | None, where: str) -> torch.Tensor:
    """(3, H, W) uint8 image -> (3, h, w) with (h, w) = input_size, by the template crop above.
    `where` names the image in the error raised when its size does not fit the network."""
    if input_size is None:
        return image
    rows, cols = (int(v) for v in input_size)
    offset = crop_offset(image.shape[1:], (rows, cols))
    if offset is None:
        raise ValueError(f"{where}: image is {image.shape[1]}x{image.shape[2]} but the network takes {rows}x{cols} "
                         "aligned crops (align the images at the network's size: preprocess.py --output_size)")
    top, left = offset
    return image[:, top:top + rows, left:left + cols]


class ImageFiles(Dataset):
    """Aligned images by path relative to `root`; item (uint8 (3, h, w) tensor fitted to input_size, index)."""

    def __init__(self, root: str | Path, relative_paths: Sequence[str], input_size: Sequence[int] | None = None):
        self.root = Path(root)
        self.paths = list(relative_paths)
        self.input_size = input_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.root / self.paths[index]
        return fit_to_input(image_tensor(path), self.input_size, str(path)), index  # ValueError naming the file


class EncodedImages(Dataset):
    """Encoded images held in memory (an insightface `.bin`), decoded in the loader's workers."""

    def __init__(self, encoded: Sequence[bytes], input_size: Sequence[int] | None = None, source: str = "images"):
        self.encoded = list(encoded)
        self.input_size = input_size
        self.source = source

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int):
        where = f"{self.source}: image {index}"
        return fit_to_input(image_tensor(bytes(self.encoded[index]), where), self.input_size, where), index


def check_mode(mode: str) -> None:
    """ValueError naming the modes unless `mode` is one of EMBEDDING_MODES."""
    if mode not in EMBEDDING_MODES:
        raise ValueError(f"unknown embedding mode {mode!r}; expected one of {', '.join(EMBEDDING_MODES)}")


# The public entry points below (flip_embed, extract_features, embed_folder) each check the mode once and
# then call the unchecked private forms, so a bad mode is one clear error before any work, and a mode
# already checked is not checked again per batch or per nested call.


def flip_embed(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str) -> np.ndarray:
    """The one place where features are formed with the horizontal flip: a batch of normalised images
    (B, 3, H, W), on the network's device, and its mirror go through `embed` in one call, and each image's
    f and f_flip are combined as `mode` asks: plain f alone; sphereface [f, f_flip] (evaluation.m's
    extractDeepFeature); insightface normalise(f + f_flip) (insightface's verification.py), see
    `protocols.combine_flip`. Returns float64 numpy, (B, D) or (B, 2D) for sphereface.

    plain mode sends the mirrors through as well, so that f comes out of the same batches as in the other
    modes: float32 kernels may round differently at another batch size."""
    check_mode(mode)
    return _flip_embed(embed, images, mode)


@torch.no_grad()
def _flip_embed(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str) -> np.ndarray:
    """`flip_embed` for a mode the caller has already checked."""
    both = embed(torch.cat([images, images.flip(-1)])).double().cpu().numpy()
    if not np.isfinite(both).all():  # never scored, cached or written: a NaN pair would count as "different"
        raise ValueError(f"the network gave non-finite features ({int((~np.isfinite(both)).any(1).sum())} of "
                         f"{len(both)} images and mirrors in a batch): the weights file is broken or diverged")
    f, f_flip = both[: len(images)], both[len(images):]
    return f if mode == "plain" else combine_flip(f, f_flip, mode)


def extract_features(embed: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, mode: str,
                     batch_size: int = 128, num_workers: int = 2, device: str = "cpu", progress: bool = True
                     ) -> np.ndarray:
    """The feature of every image of `dataset`, in dataset order, formed with the flip as `mode` asks
    (`flip_embed`, batch by batch): float64 numpy (N, D), or (N, 2D) for sphereface."""
    check_mode(mode)
    return _extract_features(embed, dataset, mode, batch_size, num_workers, device, progress)


def _extract_features(embed: Callable[[torch.Tensor], torch.Tensor], dataset: Dataset, mode: str,
                      batch_size: int, num_workers: int, device: str, progress: bool) -> np.ndarray:
    """`extract_features` for a mode the caller has already checked."""
    from tqdm import tqdm

    if len(dataset) == 0:
        raise ValueError("no images to embed")
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                        pin_memory=str(device).startswith("cuda"))
    features = []
    for images, _ in tqdm(loader, desc="features", unit="batch", disable=not progress, dynamic_ncols=True):
        features.append(_flip_embed(embed, normalize_pixels(images.to(device, non_blocking=True)), mode))
    return np.concatenate(features)


def list_images(root: str | Path) -> list[str]:
    """Every image file under `root` (any depth, symbolic links to folders followed: `images.walk_images`),
    as sorted POSIX paths relative to it; hidden entries skipped. Folders the walk cannot enter (a loop, no
    permission) are logged as warnings."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    tree = walk_images(root)
    for folder, why in tree.skipped:
        log.warning("warning: %s: %s", root / folder, why)
    found = tree.images
    if not found:
        raise ValueError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return sorted(found)


def embed_folder(embed: Callable[[torch.Tensor], torch.Tensor], root: str | Path, input_size: Sequence[int] | None,
                 mode: str = "plain", batch_size: int = 128, num_workers: int = 2, device: str = "cpu",
                 progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """(embeddings float32 (N, D), relative file names) of every image under `root`, sorted by name."""
    check_mode(mode)
    names = list_images(root)
    check_listable(names, root)   # before the work: save_embeddings would refuse them after it
    features = _extract_features(embed, ImageFiles(root, names, input_size), mode, batch_size, num_workers, device,
                                 progress)
    return features.astype(np.float32), names


NAMES_SUFFIX = ".names.txt"


def _printable(path: str) -> str:
    """A path as one can print it: the bytes of a name that is not UTF-8 as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:   # a name that is not UTF-8 on disk, held by Python as surrogate escapes
        return False
    return True


def check_listable(names: Sequence[str], root: str | Path | None = None) -> None:
    """ValueError unless every name (relative to `root`) can be a line of the UTF-8 names file: no line
    break, and UTF-8 on disk. The first name that is not is shown with its foreign bytes as \\xNN."""
    broken = [n for n in names if "\n" in n or "\r" in n]
    if broken:
        raise ValueError(f"{root or '.'}: file names with line breaks cannot be listed one per line: {broken[:3]}")
    foreign = [n for n in names if not _is_utf8(n)]
    if foreign:
        shown = [_printable(str(Path(root) / n) if root is not None else n) for n in foreign]
        more = f" (all {len(shown)}: {first_and_more(shown, 3)})" if len(shown) > 1 else ""
        raise ValueError(f"{shown[0]}: the file name is not UTF-8 (its bytes shown as \\xNN) and cannot be listed "
                         f"in the UTF-8 names file{more}: rename it")


def names_path(output: str | Path) -> Path:
    """The file names' list beside the embeddings: `emb.npy` -> `emb.names.txt` (a name no other input or
    output of the project takes: `emb.txt` could be anyone's)."""
    output = Path(output)
    return output.with_name(output.name.removesuffix(".npy") + NAMES_SUFFIX)


def check_outputs(output: str | Path, overwrite: bool = False) -> Path:
    """Before the embeddings are computed: `output` is a .npy name, neither it nor its names file exists
    (unless `overwrite`), and its folder can be written. Returns the names file."""
    output = Path(output)
    if output.suffix != ".npy":
        raise ValueError(f"--output {output}: expected a .npy file name")
    listing = names_path(output)
    for path in (output, listing):
        refuse_overwrite(path, overwrite)
    ensure_writable(output)
    return listing


def save_embeddings(output: str | Path, embeddings: np.ndarray, names: Sequence[str], overwrite: bool = False) -> Path:
    """`output` (.npy, float32 (N, D), row i = names[i]) and the names one per line (UTF-8) in
    `names_path(output)`, both written atomically; an existing file of either name is refused unless
    `overwrite`. Returns the names file. Every check comes before the first write: a name the list cannot
    hold must not leave `output` without its names file."""
    output = Path(output)
    listing = check_outputs(output, overwrite)
    if len(embeddings) != len(names):
        raise ValueError(f"{len(embeddings)} embeddings for {len(names)} names")
    check_listable(names)
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(embeddings, np.float32), allow_pickle=False)
    atomic_write_bytes(output, buffer.getvalue())
    atomic_write_text(listing, "".join(f"{n}\n" for n in names))
    return listing
