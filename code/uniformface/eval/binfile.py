"""insightface `.bin` verification sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...), as insightface's verification.py reads them.

A `.bin` is a pickle of `(bins, issame)`: `bins` the encoded images (bytes, or 1-d uint8 numpy arrays
of the encoded bytes), `issame` a list or numpy bool array with one entry per pair; pair k is images
2k and 2k+1. insightface reads it with `pickle.load(f, encoding="bytes")`.

A pickle can run any code on load, so ours goes through an Unpickler whose `find_class` resolves only
the globals numpy needs to rebuild arrays and scalars and refuses everything else.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..base.images import ImageLoadError, decode_rgb

try:  # numpy >= 2 moved numpy.core to numpy._core; pickles name either
    from numpy._core import multiarray as _multiarray, numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray, numeric as _numeric

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _module in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_module}.multiarray", "_reconstruct")] = _multiarray._reconstruct  # protocol <= 4
    _ALLOWED_GLOBALS[(f"{_module}.multiarray", "scalar")] = _multiarray.scalar              # numpy scalars
    _ALLOWED_GLOBALS[(f"{_module}.numeric", "_frombuffer")] = _numeric._frombuffer          # protocol 5


class RefusedGlobal(pickle.UnpicklingError, ValueError):
    """The pickle asked for a global outside the numpy allow-list. Also a ValueError: a file that cannot
    be used, reported by the scripts as one line naming it, like every other unusable input."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, handle, path: Path):
        super().__init__(handle, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedGlobal(
                f"{self.path}: refused to unpickle global '{module}.{name}': a .bin verification set may only "
                "reference numpy array reconstruction globals (a pickle can run code; this file is either "
                "not a .bin set or has been tampered with)") from None


def read_bin(path: str | Path, decode: bool = True) -> tuple[list, np.ndarray]:
    """(images, issame). With `decode` the images are uint8 RGB arrays (H, W, 3), else their encoded bytes.
    issame is a bool array with one entry per pair (images 2k, 2k+1)."""
    path = Path(path)
    with open(path, "rb") as handle:
        try:
            payload = _NumpyOnlyUnpickler(handle, path).load()
        except RefusedGlobal:
            raise
        except Exception as exc:
            raise ValueError(f"{path}: not a readable insightface .bin pickle ({type(exc).__name__}: {exc})") from exc
    if not (isinstance(payload, (tuple, list)) and len(payload) == 2):
        raise ValueError(f"{path}: expected a pickled (images, issame) pair, found {type(payload).__name__}")
    bins, issame = payload
    if not isinstance(bins, (list, tuple)):
        raise ValueError(f"{path}: expected a list of encoded images, found {type(bins).__name__}")
    issame = np.asarray(issame)
    if issame.ndim != 1 or not (issame.dtype == bool or np.isin(issame, (0, 1)).all()):
        raise ValueError(f"{path}: issame must be a flat list of bools, found shape {issame.shape}, "
                         f"dtype {issame.dtype}")
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{path}: {len(bins)} images but {len(issame)} issame entries; "
                         "pairs are images 2k and 2k+1, so there must be exactly twice as many images")
    encoded = [_encoded_bytes(b, path, i) for i, b in enumerate(bins)]
    images = [_decode(b, path, i) for i, b in enumerate(encoded)] if decode else encoded
    return images, issame.astype(bool)


def _encoded_bytes(item, path: Path, index: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8:
        return item.tobytes()
    raise ValueError(f"{path}: image {index} is a {type(item).__name__}, expected encoded bytes "
                     "or a uint8 array of them")


def _decode(data: bytes, path: Path, index: int) -> np.ndarray:
    try:
        return decode_rgb(data)
    except ImageLoadError as exc:
        raise ImageLoadError(f"{path}: image {index} (pair {index // 2}) cannot be decoded: {exc.reason}",
                             exc.reason) from exc
