"""Atomic writes (temp file in the same folder + os.replace) so an interrupted run never leaves a
half-written checkpoint, config or result behind."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


# Temporaries are hidden files ending in this suffix, so that a later run can sweep up what a killed
# run left behind (preprocessing does).
PARTIAL_SUFFIX = ".partial"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb", durable: bool = True) -> None:
    """Call `write(handle)` on a temporary file beside `path`, then rename it into place. `durable`
    also fsyncs (checkpoints, results); bulk outputs such as aligned images skip that cost: the rename
    alone already guarantees that a killed run leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes private (0600) files; outputs are usually shared
        with os.fdopen(fd, mode) as handle:
            write(handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda h: h.write(text), "w")


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    atomic_write(path, lambda h: h.write(data), "wb", durable)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda h: torch.save(obj, h), "wb")


def export_weights(path: str | Path, model: torch.nn.Module, cfg_dict: dict, extra: dict | None = None) -> None:
    """The final `{model_name}_{emb_dim}.pt`: tensors and plain values only, so that
    `torch.load(path, weights_only=True)` reads it, and `test.py` rebuilds the network from `spec`."""
    spec = {"model_name": cfg_dict["model_name"], "emb_dim": cfg_dict["emb_dim"],
            "input_size": list(cfg_dict["input_size"])}
    payload = {"spec": spec, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    payload.update(extra or {})
    atomic_torch_save(payload, path)


def load_weights(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "model" not in payload or "spec" not in payload:
        raise ValueError(f"{path}: not a weights file written by train.py (expected keys 'spec' and 'model')")
    return payload
