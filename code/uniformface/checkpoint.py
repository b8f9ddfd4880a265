"""Atomic writes (temp file in the same folder + os.replace) so an interrupted run never leaves a
half-written checkpoint, config or result behind."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def _atomic(path: str | Path, write: Callable[[Any], None], mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic(path, lambda h: h.write(text), "w")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(path, lambda h: h.write(data), "wb")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    _atomic(path, lambda h: torch.save(obj, h), "wb")


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
