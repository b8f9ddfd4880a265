"""A run folder's state: the atomic `torch.save` of its files (through `atomic`), the safe reading of its
`checkpoint.pt` and weights file, the pair of checkpoints a run keeps while it trains, what they hold, and
its config.yaml, rewritten when a resume changes the settings.

Nothing here unpickles code: `checkpoint.pt` and the weights file hold tensors and plain values only and
are read with `torch.load(..., weights_only=True)`, which refuses any other global (docs/RELIABILITY.md).
"""
from __future__ import annotations

import errno
import os
import pickle
import random
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..base.atomic import atomic_write, temporary_path
from ..base.config import (HISTORY_FILE, Config, ConfigError, history_lines, load_config, record_settings,
                           save_config, to_dict)
from ..base.paths import os_fix
from ..nn.centers import ClassCenters

if TYPE_CHECKING:  # what the run-state functions below read and fill
    from .build import TrainingParts


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save` into `path` through `atomic_write`. A write that fails inside torch.save (a full disk)
    raises its OSError: torch's zip writer, closing, buries it under a RuntimeError of its own
    ("inline_container.cc ... unexpected pos"), which names neither the file nor the reason."""
    try:
        atomic_write(path, lambda h: torch.save(obj, h), "wb")
    except RuntimeError as exc:
        failed_write = _os_error_behind(exc)
        if failed_write is None:
            raise
        raise failed_write from None


def _os_error_behind(exc: BaseException) -> OSError | None:
    """The OSError among the exceptions `exc` was raised from or while handling, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


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
    if previous.is_file() and os.path.samefile(path, previous):
        # a save stopped between its two steps (killed, a full disk) leaves both names on one file: it is
        # `path`'s copy already, and rename() between two links of one file does nothing (the temporary
        # would stay behind, a whole checkpoint)
        return True
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


def rng_state() -> dict:
    """Every generator's state as tensors and plain values: a checkpoint that `torch.load` reads with
    weights_only=True can hold nothing else (numpy's own state tuple pickles as numpy globals)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    numpy_state, python_state = state["numpy"], state["python"]
    torch.set_rng_state(state["torch"])
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    random.setstate((python_state["version"], tuple(int(v) for v in python_state["internal"].tolist()),
                     python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(parts: TrainingParts, iteration: int, broken_images: int, config: dict, classes: list) -> dict:
    """checkpoint.pt's content: tensors and plain values only, so that `--resume` reads it with
    weights_only=True."""
    return {"iteration": iteration, "model": parts.model.state_dict(), "centers": parts.centers.state_dict(),
            "optimizer": parts.optimizer.state_dict(), "rng": rng_state(), "broken_images": broken_images,
            "config": config, "classes": classes}


def restore_training_state(parts: TrainingParts, state: dict, path: Path) -> None:
    """A checkpoint's `state` (read by `Checkpoints.load` from `path`) into `parts` and every generator;
    CheckpointError when it does not fit them."""
    try:
        parts.model.load_state_dict(state["model"])
        parts.centers.load_state_dict(state["centers"])
        parts.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: does not fit this run's settings ({exception_summary(exc)}); "
                              "resume with the config the run was started with") from None


def weights_extra(parts: TrainingParts, classes: list, iteration: int) -> dict:
    """What the final weights file holds beside the backbone: the head, the classes, the iteration and the
    class centers (when they are not the head's weights)."""
    extra = {"head": {k: v.detach().cpu() for k, v in parts.model.head.state_dict().items()},
             "classes": list(classes), "iteration": iteration}
    if isinstance(parts.centers, ClassCenters):
        extra["centers"] = parts.centers.centers.detach().cpu()
        extra["centers_initialized"] = parts.centers.initialized.detach().cpu()
    return extra


# what `Checkpoints.load` requires of a checkpoint, and of what type
STATE_KEYS = {"iteration": int, "model": dict, "centers": dict, "optimizer": dict, "rng": dict, "classes": list}


class Checkpoints:
    """A run's checkpoint `path` and, while it trains, the one before it, `previous` (a hard link, no copy
    where the file system has them): when the loss of iteration k is not finite, the checkpoint of
    iteration k - 1 holds the very weights whose forward pass gave it, and resuming from it would diverge
    at once whatever the lr. Knows which iterations they hold, and says what is intact when a write
    fails. `resume_args`: the train.py arguments that name the run (`--logdir ... --run_name ...`)."""

    def __init__(self, path: Path, previous: Path, resume_args: str):
        self.path, self.previous, self.resume_args = path, previous, resume_args
        # iterations held by `path` and `previous` (None: no such file of this run)
        self.saved_iteration: int | None = None
        self.previous_iteration: int | None = None

    def save(self, state: dict | None, iteration: int) -> None:
        """Write `state` (of `iteration`) to `path`, the checkpoint it replaces kept as `previous`; with
        `state` None (a process that writes no files) only note that it was written. OSError: nothing
        noted, the last checkpoint intact (`write_failure` says so)."""
        if state is not None:
            if self.saved_iteration is not None:
                keep_previous(self.path, self.previous)
            atomic_torch_save(state, self.path)
        if self.saved_iteration is not None:
            self.previous_iteration = self.saved_iteration
        self.saved_iteration = iteration

    def load(self) -> dict:
        """The checkpoint at `path`, checked to hold `STATE_KEYS`; CheckpointError (one line) otherwise."""
        if not self.path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.path}")
        state = safe_torch_load(self.path)  # CheckpointError for anything but tensors and plain values
        for key, kind in STATE_KEYS.items():
            if not isinstance(state, dict) or not isinstance(state.get(key), kind):
                raise CheckpointError(f"{self.path}: not a checkpoint written by train.py ('{key}' is missing or "
                                      f"not a {kind.__name__})")
        return state

    def last_good(self, poisoned: int | None, writes: bool) -> int | None:
        """The iteration of a checkpoint at `path` to continue from after a divergence, or None. `poisoned`:
        the iteration of a state whose forward pass was not finite; a checkpoint of it diverges again at
        once whatever the lr, so `previous` is put back in its place (by the process that `writes`)."""
        good = self.saved_iteration
        if good is None or good != poisoned:
            return good
        good = self.previous_iteration
        if writes:
            if good is None and self.previous.is_file():  # kept by an earlier process of this run
                try:
                    good = int(safe_torch_load(self.previous)["iteration"])
                except (CheckpointError, KeyError, TypeError, ValueError):
                    good = None
            if good is not None and self.previous.is_file():
                self.previous.replace(self.path)
            else:
                good = None
        self.saved_iteration, self.previous_iteration = good, None
        return good

    def write_failure(self, path: Path, exc: OSError) -> str:
        """One line for a failed write of `path`: the reason, what is intact and what to do."""
        fix = os_fix(exc.errno) or "fix that"
        if self.saved_iteration is None:
            return f"cannot write {path} ({exc.strerror}); {fix}, then start the run again"
        return (f"cannot write {path} ({exc.strerror}); the checkpoint {self.path} of iteration "
                f"{self.saved_iteration} is intact: {fix}, then continue with train.py --resume {self.resume_args}")


CONFIG_FILE = "config.yaml"


def record_resumed_settings(run_dir: Path, cfg: Config, iteration: int, saved: dict | None) -> str | None:
    """At a resume with other settings than the run's config.yaml (`--resume --set lr=0.01`): what changed,
    and from which iteration, is appended to config_history.yaml and config.yaml is rewritten with the
    settings now in force, so that test.py, gather_results.py and ablate.py's tables show the run with the
    settings it ended with, and its history. `saved`: the settings the checkpoint was written with, used
    when config.yaml is missing or unusable. Returns a note naming the change, if any; OSError when a
    write fails."""
    path = run_dir / CONFIG_FILE
    try:
        before = to_dict(load_config(path))
    except ConfigError:
        before = saved or {}
    if not before:
        save_config(cfg, path)
        return None
    changes = record_settings(run_dir, before, cfg, iteration, time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    if not changes:
        return None
    (line,) = history_lines([{"iteration": iteration, "changed": changes}])
    return f"note: --resume: settings changed {line}; config.yaml now holds them, {HISTORY_FILE} records the change"
