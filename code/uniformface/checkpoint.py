"""Torch checkpoints: the atomic `torch.save` of a run's files (through `atomic`), the safe reading of a
run's `checkpoint.pt` and weights file; the lock that keeps two runs out of one run folder.

Nothing here unpickles code: `checkpoint.pt` and the weights file hold tensors and plain values only and
are read with `torch.load(..., weights_only=True)`, which refuses any other global (README, "Security").
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import pickle
import re
import shutil
import socket
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write, temporary_path

logger = logging.getLogger(__name__)


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


LOCK_FILE = ".lock"
_HELD: "weakref.WeakSet[FolderLock]" = weakref.WeakSet()


def _forget_locks_in_child() -> None:
    """A forked child (a DataLoader worker) shares the parent's lock; it closes its copy at once, so that a
    killed run's orphaned workers, which outlive it by seconds, do not keep its folder locked. Closing a
    copy releases nothing: the lock goes only with its last descriptor (or an explicit unlock)."""
    for lock in list(_HELD):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


class FolderBusy(RuntimeError):
    """Another live process holds the folder's lock; the message names it (process id, host)."""


class FolderLock:
    """An exclusive `flock` on `folder/.lock`, held while a run writes into the folder. The kernel drops
    it when the holder exits, however it exits, so the lock of a killed run never blocks the next one
    (the file stays; its text, the last holder, is only information). The holder's process id, host,
    start time and command are written into the file so that a refused run can name it."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FolderLock":
        """Take the lock or raise `FolderBusy` at once (no waiting); an OSError (read-only folder, ...)
        propagates with the lock file's name."""
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the kernel applies the umask
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(fd)
            os.close(fd)
            raise FolderBusy(f"{self.folder} is in use by {holder} (lock file {self.path}); wait for that run "
                             "to end, or use another folder") from None
        except OSError as exc:  # a file system without flock (ENOLCK): go on unlocked, and say so
            logger.warning(f"warning: cannot lock {self.path} ({exc.strerror}); a second run into this folder "
                           "would not be noticed")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        _HELD.add(self)
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        _HELD.discard(self)
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except OSError:
            pass


def _holder_text(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except ValueError:
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process (it has not written its name yet)"
    since = f", since {info['started']}" if info.get("started") else ""
    command = f": {info['command']}" if info.get("command") else ""
    return f"process {info['pid']} on host {info.get('host', '?')}{since}{command}"
