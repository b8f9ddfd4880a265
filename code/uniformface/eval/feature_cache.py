"""Features computed once per model and benchmark and kept beside the results file (docs/DESIGN.md §8.14):
YouTube Faces' ~600k frames and IJB-C's ~470k crops take long enough that a second `test.py` run on the
same model (another flag, a killed run) must not compute them again.

`cached_features` computes the rows chunk by chunk. Each finished chunk is written at once (atomically)
into a hidden folder beside the cache, so that a killed run resumes at the first chunk it had not finished;
when all are done they are joined into `X.npy` with `X.json` beside it, and the folder is removed. Every
file is tagged with a key: the model file's SHA-256 and size, the benchmark, the crop, the protocol, and a
digest of the item list (names, landmarks, each file's size and modification time). A cache or chunk
whose key differs from the run's is never read: it is recomputed and replaced. So is a cache whose array
is not the one its key file describes (rows, shape and type), and a chunk whose width or type differs
from the others'.

Torch-free: the caller's `compute` does the network's work.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

from ..base.atomic import PARTIAL_SUFFIX, atomic_write, atomic_write_text, remove_stale_partials

T = TypeVar("T")

# Bumped when what a cached row means changes (the pooling, the flip rule, the file layout).
FORMAT = 1
KEY_FILE = "key.json"


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def model_identity(model_path: str | Path | None, baseline: str | None = None, seed: int = 0) -> dict:
    """What the features depend on in the model: the weights file's SHA-256 and size (so a retrained or
    edited file is never mistaken for the old one, while a copy or a `touch` keeps the cache); the
    baseline and its seed when a baseline is scored instead."""
    if baseline == "raw":
        return {"baseline": "raw"}
    identity = {"model_sha256": file_sha256(model_path), "model_size": os.path.getsize(model_path)}
    if baseline is not None:
        identity.update(baseline=baseline, seed=int(seed))
    return identity


def listing_digest(lines: Iterable[str]) -> str:
    """SHA-256 of the item list, one line per item (what the features are computed from, in order)."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8", "surrogateescape"))
        digest.update(b"\n")
    return digest.hexdigest()


def file_stamp(path: str | Path) -> str:
    """`size<TAB>mtime_ns` of a file, for the item list: a file rewritten since (a new alignment under the
    same name) changes the key."""
    status = os.stat(path)
    return f"{status.st_size}\t{status.st_mtime_ns}"


def chunk_folder(path: Path) -> Path:
    return path.with_name(f".{path.name}.chunks")


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _full_key(key: dict) -> dict:
    return {"format": FORMAT, **key}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _load_rows(path: Path, rows: int | None) -> np.ndarray | None:
    """The array at `path`, or None when it is absent, unreadable or not `rows` long."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.ndim != 2 or (rows is not None and len(array) != rows):
        return None
    return array


def load_cached(path: str | Path, key: dict) -> np.ndarray | None:
    """The complete cache at `path` when its key is `key` and the array is the one the key file describes
    (its rows, shape and type: another array copied over the file is not this model's), else None."""
    path = Path(path)
    meta = _read_json(sidecar(path))
    if not isinstance(meta, dict) or meta.get("key") != _full_key(key):
        return None
    array = _load_rows(path, meta.get("rows"))
    if array is None or meta.get("shape") != list(array.shape) or meta.get("dtype") != str(array.dtype):
        return None
    return array


def _save_array(path: Path, array: np.ndarray, durable: bool) -> None:
    atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False), "wb", durable)


def _form(array: np.ndarray) -> tuple[int, str]:
    """What every chunk of one cache shares: the width and the element type."""
    return array.shape[1], str(array.dtype)


def _open_chunks(folder: Path, key: dict) -> None:
    """Make `folder` hold only chunks of `key`: chunks of another key are deleted before the new key is
    written, so that a kill in between can never pair old chunks with the new key."""
    if _read_json(folder / KEY_FILE) != key:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        atomic_write_text(folder / KEY_FILE, json.dumps(key, indent=1))
    for leftover in folder.glob(f".*{PARTIAL_SUFFIX}"):  # a killed chunk write
        leftover.unlink(missing_ok=True)


def cached_features(path: str | Path | None, key: dict, chunks: Sequence[T], rows: Sequence[int],
                    compute: Callable[[T], np.ndarray], sizes: Sequence[int] | None = None,
                    progress: bool = True, desc: str = "features", unit: str = "img") -> tuple[np.ndarray, dict]:
    """The rows of every chunk, in chunk order: `compute(chunk)` returns `rows[i]` rows for chunk i.
    With a cache `path` (`X.npy`), a complete cache of the same key is returned as it is; otherwise the
    chunks a killed run finished are read back and only the others computed. `sizes` (the images of each
    chunk) drive the progress bar. Returns (array, a note for the results: where the cache is and how much
    of it was reused)."""
    from tqdm import tqdm

    if len(chunks) != len(rows) or (sizes is not None and len(sizes) != len(chunks)):
        raise ValueError(f"{len(chunks)} chunks, {len(rows)} row counts and {len(sizes or [])} sizes")
    sizes = list(sizes) if sizes is not None else list(rows)
    if path is not None:
        path = Path(path)
        cached = load_cached(path, key)
        if cached is not None:
            return cached, {"features": str(path), "features_reused": "all"}
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(path.parent, [path.name, sidecar(path).name])
        folder = chunk_folder(path)
        _open_chunks(folder, {**_full_key(key), "chunk_rows": list(rows)})

    def computed(index: int) -> np.ndarray:
        part = np.asarray(compute(chunks[index]))
        if part.ndim != 2 or len(part) != rows[index]:
            raise RuntimeError(f"chunk {index}: {part.shape} computed, {rows[index]} rows expected")
        if path is not None:
            # Not fsynced: a rename after a kill is old-or-new already; a chunk lost to a power failure
            # fails to load and is computed again.
            _save_array(folder / f"chunk_{index:06d}.npy", part, durable=False)
        return part

    parts: list[np.ndarray] = []
    reused: list[int] = []
    with tqdm(total=sum(sizes), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True) as bar:
        for index, expected in enumerate(rows):
            stored = folder / f"chunk_{index:06d}.npy" if path is not None else None
            part = _load_rows(stored, expected) if stored is not None and stored.exists() else None
            if part is None:
                part = computed(index)
            else:
                reused.append(index)
            parts.append(part)
            bar.update(sizes[index])
    if len({_form(part) for part in parts}) > 1:
        # Chunks of one key that disagree (a file replaced by hand): no stored chunk is trusted.
        for index in reused:
            parts[index] = computed(index)
        reused = []
        if len({_form(part) for part in parts}) > 1:
            raise RuntimeError(f"the chunks computed differ in width or type: {sorted({_form(p) for p in parts})}")
    features = np.concatenate(parts) if parts else np.zeros((0, 0))
    if path is None:
        return features, {}
    # The old key goes first: a kill between the two writes must not leave the old key beside new rows.
    sidecar(path).unlink(missing_ok=True)
    _save_array(path, features, durable=True)
    atomic_write_text(sidecar(path), json.dumps({"key": _full_key(key), "rows": len(features),
                                                 "shape": list(features.shape), "dtype": str(features.dtype)},
                                                indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    note = "none" if not reused else f"{len(reused)} of {len(chunks)} chunks (resumed)"
    return features, {"features": str(path), "features_reused": note}


def chunked(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive groups of item indices, each closed once its `sizes` reach `budget` (an item larger
    than the budget is a group of its own)."""
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for index, size in enumerate(sizes):
        current.append(index)
        total += int(size)
        if total >= budget:
            groups.append(current)
            current, total = [], 0
    if current:
        groups.append(current)
    return groups
