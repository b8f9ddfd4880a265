"""Image files: the one decoder (a photo or an encoded image -> uint8 RGB (H, W, 3)), the one header
reader, the one image-tree walker and the one JPEG/PNG writer, used by alignment, training sets,
embedding and verification alike, so that a file gives the same pixels on every path. Torch-free:
torch callers convert with `torch.from_numpy(pixels).permute(2, 0, 1)`.

Decoding: the EXIF orientation is applied (a photo is used upright, as it is shown); 16- and 32-bit greys
are scaled to 0..255, not clipped; alpha is dropped, as Matlab's imread (the official pipeline's reader)
does; a palette image with a transparent colour is read through RGBA, so that the transparent entry keeps
its colour; CMYK, YCbCr, LAB, HSV, 1 and L go through Pillow's own conversions.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

from .atomic import atomic_write_bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Pillow refuses to open an image of more than 2 * Image.MAX_IMAGE_PIXELS pixels (178,956,970 by default)
# as a possible decompression bomb; `max_pixels` moves that limit for one call.
PILLOW_MAX_PIXELS = 2 * 89_478_485
JPEG_QUALITY = 95
_ORIENTATION = 0x0112
_QUARTER_TURNS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class ImageLoadError(ValueError):
    """An image that cannot be decoded (empty, truncated, not an image, too large); the message names it."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class ImageTooLargeError(ImageLoadError):
    """An image over the decompression-bomb limit (Pillow's, or the caller's `max_pixels`)."""


# Pillow reads its decompression-bomb limit from a module global when it opens a file. Every open here
# happens under this lock with that check switched off, and the limit of the call is applied to the
# size just read; so the limit of one call never leaks into another thread's call, and Pillow's
# warning between 1x and 2x its limit is never raised.
_OPEN_LOCK = threading.Lock()


def _label(source, name: str | None) -> str:
    if name is not None:
        return name
    return "(encoded bytes)" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)


def _pixel_limit(max_pixels: float | None) -> float:
    if max_pixels is not None:
        return float(max_pixels)
    return math.inf if Image.MAX_IMAGE_PIXELS is None else 2.0 * Image.MAX_IMAGE_PIXELS


@contextlib.contextmanager
def _opened(source, max_pixels: float | None, label: str) -> Iterator[Image.Image]:
    """Pillow's image of `source` (a path or encoded bytes), header read, pixels not yet decoded; raises
    ImageTooLargeError above the limit (None: Pillow's, inf: none)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        handle = io.BytesIO(bytes(source))
    else:
        # A file's first block is read here, outside the lock, so that threads reading headers in
        # parallel (training sets' size check) wait on their disks side by side, not one after another.
        handle = open(source, "rb", buffering=1 << 16)
    with handle:
        if not isinstance(handle, io.BytesIO):
            handle.peek(1)
        with _OPEN_LOCK:
            limit = _pixel_limit(max_pixels)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(handle)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        with image:
            width, height = image.size
            if width * height > limit:
                reason = (f"image size ({width * height} pixels) exceeds the limit of {limit:.0f} pixels, could be a "
                          "decompression bomb")
                raise ImageTooLargeError(f"cannot decode image {label}: {reason}", reason)
            yield image


def _load_error(exc: Exception, what: str) -> ImageLoadError:
    """Pillow's failure `exc` as an ImageLoadError `<what>: <reason>`."""
    if isinstance(exc, Image.UnidentifiedImageError):
        reason = "not an image file (or an unsupported format)"
    else:
        reason = str(exc) or type(exc).__name__
    return ImageLoadError(f"{what}: {reason}", reason)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation known from the header (1 when absent or unreadable). A PNG whose eXIf chunk
    follows its pixel data is not seen here (Pillow would have to decode the pixels to reach it)."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        return int(image.getexif().get(_ORIENTATION, 1))
    except Exception:  # a damaged EXIF block does not make the image unusable
        return 1


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> a writable uint8 RGB (H, W, 3) array (see the module docstring)."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():  # a NaN peak would scale every pixel to 0, silently
            raise ValueError("non-finite pixel values")
        if mode.startswith("I;16"):
            full_scale = 65535.0
        else:  # 32-bit int or float: scale by the range the values actually use
            peak = float(values.max()) if values.size else 0.0
            full_scale = 255.0 if peak <= 255 else (65535.0 if peak <= 65535 else peak)
        grey = np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode != "RGB":
        if mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        image = image.convert("RGB")
    return np.array(image, dtype=np.uint8)


def read_rgb(source: str | Path | bytes, max_side: int | None = None, max_pixels: float | None = None,
             name: str | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Decode `source` (a file path, or an encoded image's bytes) to a writable uint8 RGB (H, W, 3), upright
    per its EXIF orientation. When `max_side` is given and the image is larger, it is reduced (JPEG DCT
    scaling, then an area-averaging box filter) so that its longer side is `max_side`. Returns (pixels,
    (sx, sy)), the original (upright) size over the returned size: a point at 1-based position p of the
    result is at (p - 0.5) * s + 0.5 in the original (`crop.to_original`).
    Raises ImageLoadError naming the file (or `name`) for empty, truncated or non-image data, and
    ImageTooLargeError for images over the decompression-bomb limit: Pillow's (178,956,970 pixels) or
    `max_pixels` (inf: none)."""
    label = _label(source, name)
    try:
        with _opened(source, max_pixels, label) as image:
            width, height = image.size
            if max_side and max(width, height) > max_side and image.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT: an 8000x8000 JPEG stays cheap.
                ratio = max_side / max(width, height)
                image.draft(None, (math.ceil(width * ratio), math.ceil(height * ratio)))
            image.load()
            before = image.size
            try:
                ImageOps.exif_transpose(image, in_place=True)
            except Exception:  # a damaged EXIF block does not make the pixels unusable
                pass
            if image.size != before:  # turned a quarter
                width, height = height, width
            pixels = _to_rgb_array(image)
        if max_side and max(pixels.shape[:2]) > max_side:
            ratio = max_side / max(pixels.shape[:2])
            target = (max(1, round(pixels.shape[1] * ratio)), max(1, round(pixels.shape[0] * ratio)))
            pixels = np.array(Image.fromarray(pixels).resize(target, Image.Resampling.BOX))
    except ImageLoadError:
        raise
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...)
        raise _load_error(exc, f"cannot decode image {label}") from exc
    if pixels.ndim != 3 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageLoadError(f"cannot decode image {label}: empty image", "empty image")
    return pixels, (width / pixels.shape[1], height / pixels.shape[0])


def decode_rgb(source: str | Path | bytes, max_side: int | None = None, max_pixels: float | None = None,
               name: str | None = None) -> np.ndarray:
    """Decode `source` (a path or encoded bytes) to a writable uint8 RGB (H, W, 3); see `read_rgb`."""
    return read_rgb(source, max_side, max_pixels, name)[0]


def image_header_size(source: str | Path | bytes, name: str | None = None,
                      max_pixels: float | None = None) -> tuple[int, int]:
    """(height, width) of the upright image (as `decode_rgb` returns it), from its header alone: tens of
    microseconds a file, no pixel decoded. Raises ImageLoadError naming the file (or `name`) when the
    header cannot be read or announces more pixels than the limit (see `read_rgb`)."""
    label = _label(source, name)
    try:
        with _opened(source, max_pixels, label) as image:
            width, height = image.size
            if _orientation(image) in _QUARTER_TURNS:
                width, height = height, width
    except ImageLoadError:
        raise
    except Exception as exc:
        raise _load_error(exc, f"cannot read the header of image {label}") from exc
    return height, width


# ------------------------------------------------------------------------------------------------ writing

def image_format(path: str | Path) -> str:
    """Pillow's format name for a file name's extension (JPEG when Pillow does not know the extension)."""
    return Image.registered_extensions().get(Path(path).suffix.lower(), "JPEG")


def encode_image(rgb: np.ndarray, file_format: str = "JPEG", quality: int = JPEG_QUALITY) -> bytes:
    """uint8 RGB (H, W, 3) -> encoded bytes; `quality` applies to JPEG and WebP (Pillow's default 4:2:0
    chroma subsampling for JPEG)."""
    array = np.asarray(rgb)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"images must be uint8 (H, W, 3) RGB arrays, got {array.dtype} {array.shape}")
    options = {"quality": int(quality)} if file_format in ("JPEG", "WEBP") else {}
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=file_format, **options)
    return buffer.getvalue()


def write_image(path: str | Path, rgb: np.ndarray, quality: int = JPEG_QUALITY, durable: bool = False) -> None:
    """Encode `rgb` in the format the file name asks for (JPEG at `quality` for an unknown extension) and
    write it atomically: a killed run never leaves a partial image. Bulk outputs skip the fsync unless
    `durable` (the rename alone already guarantees old-or-new after a kill)."""
    atomic_write_bytes(path, encode_image(rgb, image_format(path), quality), durable)


# ------------------------------------------------------------------------------------------------ walking

@dataclass
class ImageTree:
    """What `walk_images` found, as POSIX paths relative to the root."""
    images: list[str] = field(default_factory=list)   # files with an image extension
    others: list[str] = field(default_factory=list)   # every other file
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (folder, why it was not walked)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_file_or_dangling(entry: os.DirEntry) -> bool:
    """A regular file, or a link to nothing (its reader then reports it); not a FIFO, socket or device."""
    try:
        return entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path))
    except OSError:
        return False


def walk_images(root: str | Path, max_depth: int | None = None, avoid: str | Path | None = None,
                avoid_label: str = "the output folder") -> ImageTree:
    """The files under `root`, each folder's entries in sorted name order with its files before its
    subfolders; hidden entries (a leading '.') are skipped. Folders reached through a symbolic link are
    walked like the others, under the link's name, except a link that leads back to a folder on its own
    path from `root` (a loop) or to `avoid` (an output folder, `avoid_label` in the reason) or inside it:
    those go to `skipped` as (relative path, reason), as do subfolders that cannot be listed. A dangling
    link is a file (its reader reports it). `max_depth` limits the path components of what is listed
    (2: `<folder>/<file>`). Raises OSError when `root` itself cannot be listed."""
    tree = ImageTree()
    avoid_real = os.path.realpath(avoid) if avoid is not None else None
    root_real = os.path.realpath(root)
    if avoid_real is not None and (root_real == avoid_real or root_real.startswith(avoid_real + os.sep)):
        avoid_real = None  # the whole tree lies inside `avoid` (a dataset kept in the output folder): nothing to avoid
    listed = {root_real: ""}  # real path of every folder walked -> its path from the root

    def walk(folder: str, relative: str, depth: int, chain: dict[str, str]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as exc:
            if not relative:
                raise
            tree.skipped.append((relative, f"folder cannot be listed: {exc.strerror or exc}"))
            return
        folders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = entry.name if not relative else f"{relative}/{entry.name}"
            try:
                is_folder = entry.is_dir()  # follows links; a dangling link is a file
            except OSError:
                is_folder = False
            if is_folder:
                folders.append((entry, path))
            elif _is_file_or_dangling(entry):
                (tree.images if is_image_name(entry.name) else tree.others).append(path)
            else:  # a FIFO, socket or device named *.jpg: opening it could block forever
                tree.skipped.append((path, "not a regular file: not read"))
        if max_depth is not None and depth + 1 >= max_depth:
            return
        for entry, path in folders:
            real = os.path.realpath(entry.path)
            if real in chain:
                tree.skipped.append((path, f"symbolic link to {chain[real] or 'the dataset root'}, one of the folders "
                                           "that contain it: a loop, not followed"))
            elif real in listed:  # each folder once: links between folders would otherwise multiply the walk
                tree.skipped.append((path, f"the same folder as {listed[real] or 'the dataset root'}, listed once"))
            elif avoid_real is not None and (real == avoid_real or real.startswith(avoid_real + os.sep)):
                tree.skipped.append((path, f"symbolic link into {avoid_label}: not followed"))
            else:
                listed[real] = path
                walk(entry.path, path, depth + 1, {**chain, real: path})

    walk(str(root), "", 0, {root_real: ""})
    return tree
