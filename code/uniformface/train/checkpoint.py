"""Torch checkpoints: the atomic `torch.save` of a run's files (through `atomic`), the safe reading of a
run's `checkpoint.pt` and weights file.

Nothing here unpickles code: `checkpoint.pt` and the weights file hold tensors and plain values only and
are read with `torch.load(..., weights_only=True)`, which refuses any other global (README, "Security").
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..base.atomic import atomic_write, temporary_path

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
    """The final weights file, read as `safe_torch_load` reads a checkpoint (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    payload = safe_torch_load(path, "weights file", fix="pass the {model_name}_{emb_dim}.pt of a run folder")
    if not isinstance(payload, dict) or "model" not in payload or "spec" not in payload:
        raise ValueError(f"{path}: not a weights file written by train.py (expected keys 'spec' and 'model')")
    return payload


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (refused, unreadable, not one train.py wrote); names the file."""


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
# torch.load's own advice, which must not reach a user who holds a file of unknown origin
_TORCH_ADVICE = ("weights_only", "Weights only load failed", "Check the documentation", "Please file an issue")


def safe_torch_load(path: str | Path, what: str = "checkpoint",
                    fix: str = "delete it, or train into another folder") -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, its failures as one-line `CheckpointError`s
    naming the file (`what` it should have been, and `fix`). weights_only's unpickler builds tensors and
    plain containers only and refuses every other global before anything is called, so a file made to
    run code is refused without running it."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if found:
            raise CheckpointError(
                f"{path}: refused: not a {what} written by train.py: it asks to unpickle '{found[1]}', not only "
                f"tensors and plain values (the file comes from elsewhere, or from a version before weights_only "
                f"files, and could run code); nothing in it was run: {fix}") from None
        raise CheckpointError(f"{path}: not a {what} PyTorch can read ({exception_summary(exc)}): {fix}") from None
    except (RuntimeError, EOFError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{path}: damaged or not a {what} PyTorch can read "
                              f"({exception_summary(exc)}): {fix}") from None


def exception_summary(exc: BaseException, limit: int = 160) -> str:
    """"Type: first informative line" of an exception's message, leaving out torch.load's advice to load
    with weights_only=False."""
    for line in str(exc).splitlines():
        line = line.strip()
        if line and not any(word in line for word in _TORCH_ADVICE):
            return f"{type(exc).__name__}: {line[:limit]}"
    if "WeightsUnpickler error:" in str(exc):
        return f"{type(exc).__name__}: {str(exc).split('WeightsUnpickler error:', 1)[1].strip()[:limit]}"
    return type(exc).__name__


def keep_previous(path: str | Path, previous: str | Path) -> bool:
    """Make `previous` a copy of `path` (a hard link where the file system has them), atomically, so that
    `path` itself exists at every moment. Returns False when there is no `path`."""
    path, previous = Path(path), Path(previous)
    if not path.is_file():
        return False
    tmp = temporary_path(previous)
    try:
        try:
            os.link(path, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            shutil.copyfile(path, tmp)
        os.replace(tmp, previous)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
