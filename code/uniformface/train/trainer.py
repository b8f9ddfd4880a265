"""The training loop: SphereFace backbone + margin head + UniformFace's uniform loss on moving class
centers (Duan et al. 2019, Eq. 6-7), one loop for one process or many (torchrun + DDP).

Objective per iteration: L = CE(head(f(x)), y) + alpha * L_u(centers) [+ regularface * L_r(W)], then
after the optimizer step the centers move: c <- c - beta * delta_c (Eq. 7).
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..base import distributed
from ..nn.centers import ClassCenters, GlobalBatch, WeightCenters, mean_min_angle_tensor, nearest_center_figures
from ..base.atomic import atomic_write_text, remove_stale_partials
from ..base.locks import FolderBusy, FolderLock
from .checkpoint import (CheckpointError, atomic_torch_save, exception_summary, export_weights,
                         keep_previous, safe_torch_load)
from ..base.config import (HISTORY_FILE, Config, ConfigError, history_lines, load_config, record_settings,
                           save_config, to_dict)
from ..data import GlobalBatchSampler, check_images, open_train_set, training_loader
from ..base.devices import resolve_device
from ..eval.evaluate import evaluate_pairs
from ..nn.heads import build_head
from ..nn.losses import regularface_loss, uniform_loss
from ..nn.models import build_model, normalize_pixels
from ..base.paths import os_fix

logger = logging.getLogger(__name__)

STATE_FILE = "checkpoint.pt"
# The checkpoint before the latest, kept while training (a hard link, no copy where the file system has
# them): when the loss of iteration k is not finite, the checkpoint of iteration k - 1 holds the very
# weights whose forward pass gave it, and resuming from it would diverge at once whatever the lr.
PREVIOUS_STATE_FILE = "checkpoint.prev.pt"
METRICS_FILE = "metrics.jsonl"


class TrainingError(RuntimeError):
    """A run that cannot start or go on, for a reason the (one-line) message names, with the fix."""


class TrainingDiverged(TrainingError):
    """The loss, weights or centers stopped being finite; the message names the iteration and the
    checkpoint to continue from."""


def lock_folder(folder: str | Path, lock: FolderLock | None = None) -> FolderLock:
    """`folder`'s lock, taken (or `lock`, taken if it is not yet), or TrainingError naming the process
    that holds it, or why the folder cannot be written."""
    lock = lock if lock is not None else FolderLock(folder)
    try:
        return lock.acquire()
    except FolderBusy as exc:
        raise TrainingError(str(exc)) from None
    except OSError as exc:
        raise TrainingError(f"cannot write in {folder} ({exc.strerror}); choose a writable --logdir, or make the "
                            "folder writable") from exc


def check_device(name: str) -> torch.device:
    """The configured device, or TrainingError when this machine does not have it (before anything is
    built on it: PyTorch's own errors for a missing GPU come as tracebacks from deep inside)."""
    try:
        return resolve_device(name, option="config key 'device'", use="--set device={}")
    except ValueError as exc:
        raise TrainingError(str(exc)) from None


class Recognizer(nn.Module):
    """Backbone and head in one module so that DDP synchronises both."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        features = self.backbone(images)
        return features, self.head(features, labels)


def learning_rate(cfg: Config, iteration: int) -> float:
    """Step schedule (x lr_gamma at each milestone) after an optional linear warm-up."""
    lr = cfg.lr * cfg.lr_gamma ** sum(iteration >= m for m in cfg.milestones)
    if cfg.warmup_iters and iteration < cfg.warmup_iters:
        lr *= (iteration + 1) / cfg.warmup_iters
    return lr


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Caffe's multipliers from `sphereface_model.prototxt`: biases learn at 2x the rate without weight
    decay (`param { lr_mult: 2 decay_mult: 0 }`); weights and PReLU slopes at 1x with decay."""
    biases = [p for name, p in model.named_parameters() if name.endswith(".bias")]
    others = [p for name, p in model.named_parameters() if not name.endswith(".bias")]
    return [{"params": others, "weight_decay": weight_decay, "lr_mult": 1.0},
            {"params": biases, "weight_decay": 0.0, "lr_mult": 2.0}]


def weights_filename(cfg: Config) -> str:
    return f"{cfg.model_name}_{cfg.emb_dim}.pt"


def _head_kwargs(cfg: Config) -> dict:
    loss = cfg.loss
    kwargs = {k: v for k, v in (("m", loss.m), ("s", loss.s)) if v is not None}
    if loss.name == "sphereface":
        kwargs.pop("s", None)
        kwargs.update(base=loss.base, gamma=loss.gamma, power=loss.power, lambda_min=loss.lambda_min,
                      gradient=loss.gradient)
    return kwargs


def build_centers(cfg: Config, num_classes: int, head: nn.Module):
    if cfg.center_mode == "weight":
        return WeightCenters(head, scope="batch" if cfg.compute_in_batch else "all", normalize=cfg.normalize_centers)
    return ClassCenters(num_classes, cfg.emb_dim, scope="batch" if cfg.compute_in_batch else "all",
                        normalize=cfg.normalize_centers)


@dataclass
class StepMetrics:
    """One step's figures as 0-d tensors on the training device: reading one (float(m.loss)) waits for the
    device to finish the step, so the loop sums them there and reads the sums at its log points."""
    loss: torch.Tensor
    ce: torch.Tensor
    uniform: torch.Tensor
    regular: torch.Tensor
    accuracy: torch.Tensor

    def stacked(self) -> torch.Tensor:
        """(loss, ce, uniform, regular, accuracy) as one float64 (5,) tensor on the device."""
        return torch.stack([self.loss, self.ce, self.uniform, self.regular, self.accuracy]).double()


def _rng_state() -> dict:
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


def _set_rng_state(state: dict) -> None:
    numpy_state, python_state = state["numpy"], state["python"]
    torch.set_rng_state(state["torch"])
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["gauss"]))
    random.setstate((python_state["version"], tuple(int(v) for v in python_state["internal"].tolist()),
                     python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_jsonl(path: Path, last_iteration: int) -> list[str]:
    """After a resume, drop log lines the crashed run wrote past its last checkpoint, and lines that are
    not a JSON record with an iteration (the last one cut by a kill); returns a warning per such line."""
    if not path.exists():
        return []
    keep, warnings = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            iteration = json.loads(line)["iteration"]
            if not isinstance(iteration, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            cut = f"{line[:40]}..." if len(line) > 40 else line
            warnings.append(f"warning: {path}: line {number} is not a complete JSON record ({cut!r}; cut off by "
                            "a killed run?); dropped")
            continue
        if iteration <= last_iteration:
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))
    return warnings


class Trainer:
    """One run in one run folder. The folder is locked (`locks.FolderLock`) from construction until
    `close()` (which `train()` calls): a second run into it is refused at once, naming this one. Pass
    `lock` when the caller already holds the folder's lock (ablate.py holds its settings' folders)."""

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
                 lock: FolderLock | None = None):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.lock, self._own_lock = lock, False
        self.topology, self.device = distributed.setup(str(check_device(cfg.resolved_device())))
        if self.topology.is_main:
            self._lock_folder()
        try:
            self._build(resume)
        except BaseException:
            self.close()
            raise

    def _lock_folder(self) -> None:
        self._own_lock = self.lock is None
        self.lock = lock_folder(self.run_dir, self.lock)
        removed = remove_stale_partials(self.run_dir, self._written_names())
        if removed:
            logger.info(f"note: removed {len(removed)} temporary file(s) that a killed write left in {self.run_dir}: "
                        + ", ".join(p.name for p in removed))

    def _written_names(self) -> list[str]:
        """What a run writes into its folder (atomically: a killed write leaves `.<name>.*.partial`)."""
        return [STATE_FILE, PREVIOUS_STATE_FILE, "config.yaml", HISTORY_FILE, METRICS_FILE,
                weights_filename(self.cfg), "diverged.txt"]

    def close(self) -> None:
        """Release the folder's lock (when this Trainer took it)."""
        if self._own_lock and self.lock is not None:
            self.lock.release()

    def _build(self, resume: bool) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2 ** 32)
        random.seed(cfg.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        self.dataset = open_train_set(cfg.dataset.train, exclude=cfg.dataset.exclude_identities,
                                      min_images_per_class=cfg.min_images_per_class, flip=cfg.flip, seed=cfg.seed)
        check = check_images(self.dataset, cfg.input_size, cfg.dataset.train)
        if self.topology.is_main:
            for line in check.lines(cfg.dataset.train):
                logger.warning(line)
        # the skipped images were named above; the loop names only the new ones it meets
        self._reported = {f"{self.dataset.describe(i)}: {why}" for i, why in self.dataset.skip.items()}
        self._new_problems = 0
        num_classes = self.dataset.num_classes
        if num_classes < 2:
            raise ValueError(f"training set {cfg.dataset.train} has {num_classes} class; at least 2 are needed")
        self._check_labels()

        backbone = build_model(cfg.model_name, cfg.emb_dim, tuple(cfg.input_size))
        head = build_head(cfg.loss.name, cfg.emb_dim, num_classes, **_head_kwargs(cfg))
        self.model = Recognizer(backbone, head).to(self.device)
        if cfg.channels_last and self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.centers = build_centers(cfg, num_classes, self.model.head).to(self.device)
        self.optimizer = torch.optim.SGD(parameter_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                         momentum=cfg.momentum)
        self.iteration = 0
        self.broken_images = 0
        # iterations held by checkpoint.pt and checkpoint.prev.pt (None: no such file of this run)
        self._saved_iteration: int | None = None
        self._previous_iteration: int | None = None
        # iteration, cross-entropy and uniform loss of the first step whose loss was not finite (iteration
        # -1: none yet), kept on the device and read at the next check (see _raise_if_diverged)
        self._first_non_finite = torch.full((3,), -1.0, dtype=torch.float64, device=self.device)
        if resume and not self.state_path().is_file():
            # stopped before its first checkpoint (or never started): a job script that always passes
            # --resume starts the run here
            if self.topology.is_main:
                logger.info(f"note: --resume: {self.run_dir} holds no checkpoint yet; starting the run from "
                            "iteration 0")
            resume = False
        if resume:
            saved = self._load_state()
            if self.topology.is_main:
                self._record_settings(saved)
        elif self.topology.is_main:
            try:
                save_config(cfg, self.run_dir / "config.yaml")
            except OSError as exc:
                raise TrainingError(self._write_failure(self.run_dir / "config.yaml", exc)) from exc

        self.net: nn.Module = self.model
        if self.topology.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net)

    # ----------------------------------------------------------------------------- state
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def _check_labels(self) -> None:
        """Every label of the training set in [0, num_classes), checked once, here: the training step takes
        the labels as they come (checking each batch's would read them back from the device)."""
        n = self.dataset.num_classes
        labels = getattr(self.dataset, "labels", None)  # packed / RecordIO sets hold them as one array
        if labels is not None:
            labels = np.asarray(labels)
            outside = np.flatnonzero((labels < 0) | (labels >= n))
            indices = outside[:1].tolist()
        else:
            indices = range(len(self.dataset))
        for index in indices:
            label = self.dataset.label(index)
            if not 0 <= label < n:
                raise ValueError(f"training set {self.cfg.dataset.train}: {self.dataset.describe(index)} has "
                                 f"label {label}, outside [0, {n})")

    def _non_finite(self) -> str | None:
        """What of the training state is not finite (named), or None; one read of the device for all of it."""
        parts = [("the weights", self.model.state_dict()), ("the class centers", self.centers.state_dict()),
                 ("the optimizer's momentum buffers", {f"{i}.{k}": v for i, st in self.optimizer.state.items()
                                               for k, v in st.items()})]
        named = [(what, name, value) for what, tensors in parts for name, value in tensors.items()
                 if torch.is_tensor(value) and value.is_floating_point()]
        if not named:
            return None
        finite = torch.stack([torch.isfinite(value).all().to(self.device) for _, _, value in named]).tolist()
        for (what, name, _), ok in zip(named, finite):
            if not ok:
                return f"{what} ({name})"
        return None

    def _raise_if_diverged(self, record: list[float] | None = None) -> None:
        """TrainingDiverged when a step's loss was not finite since the last check. `record`: the values of
        `_first_non_finite`, already read with others (else they are read here). Unless
        `check_finite_every_step`, the loss is checked here, at each log point and before each checkpoint,
        not at every step: a divergence is found up to log_every - 1 steps late, and named by the step
        where it happened."""
        iteration, ce, uniform = record if record is not None else self._first_non_finite.tolist()
        if iteration >= 0:
            late = "" if iteration == self.iteration else f"; found at iteration {self.iteration}, the next check"
            raise self._diverged(f"loss is not finite at iteration {int(iteration)} (cross-entropy {ce:.4g}, "
                                 f"uniform {uniform:.4g}{late})", poisoned=int(iteration) - 1)

    def _checkpoint(self) -> None:
        """Save the state, unless it is not finite: then the run stops (a checkpoint is never replaced
        by a broken state). The previous checkpoint is kept as checkpoint.prev.pt (see _diverged)."""
        self._raise_if_diverged()
        bad = self._non_finite()
        if bad is not None:
            raise self._diverged(f"{bad} are not finite after iteration {self.iteration}")
        if self.topology.is_main:
            self._save_state()
        if self._saved_iteration is not None:
            self._previous_iteration = self._saved_iteration
        self._saved_iteration = self.iteration

    def _save_state(self) -> None:
        """checkpoint.pt (main rank only): tensors and plain values only, so that `--resume` reads it with
        weights_only=True."""
        state = {"iteration": self.iteration, "model": self.model.state_dict(),
                 "centers": self.centers.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "rng": _rng_state(), "broken_images": self.broken_images, "config": to_dict(self.cfg),
                 "classes": list(self.dataset.classes)}
        path = self.state_path()
        try:
            if self._saved_iteration is not None:
                keep_previous(path, self.run_dir / PREVIOUS_STATE_FILE)
            atomic_torch_save(state, path)
        except OSError as exc:
            raise TrainingError(self._write_failure(path, exc)) from exc

    def _write_failure(self, path: Path, exc: OSError) -> str:
        """One line for a failed write: the file, the reason, what is intact and what to do."""
        fix = os_fix(exc.errno) or "fix that"
        if self._saved_iteration is None:
            return f"cannot write {path} ({exc.strerror}); {fix}, then start the run again"
        return (f"cannot write {path} ({exc.strerror}); the checkpoint {self.state_path()} of iteration "
                f"{self._saved_iteration} is intact: {fix}, then continue with train.py --resume "
                f"--logdir {self.run_dir.parent} --run_name {self.run_dir.name}")

    def _load_state(self) -> dict | None:
        """Continue from checkpoint.pt; returns the settings it was written with (its "config")."""
        path = self.state_path()
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        state = safe_torch_load(path)  # CheckpointError (one line) for anything but tensors and plain values
        expected = {"iteration": int, "model": dict, "centers": dict, "optimizer": dict, "rng": dict, "classes": list}
        for key, kind in expected.items():
            if not isinstance(state, dict) or not isinstance(state.get(key), kind):
                raise CheckpointError(f"{path}: not a checkpoint written by train.py ('{key}' is missing or not "
                                      f"a {kind.__name__})")
        if state["classes"] != self.dataset.classes:
            raise ValueError(f"--resume: the training set's classes differ from those of {path}")
        try:
            self.model.load_state_dict(state["model"])
            self.centers.load_state_dict(state["centers"])
            self.optimizer.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path}: does not fit this run's settings ({exception_summary(exc)}); "
                                  "resume with the config the run was started with") from None
        self.iteration = state["iteration"]
        self.broken_images = int(state.get("broken_images", 0))
        self._saved_iteration = self.iteration
        return state.get("config") if isinstance(state.get("config"), dict) else None

    def _record_settings(self, saved: dict | None) -> None:
        """At a resume with other settings than the run's config.yaml (`--resume --set lr=0.01`): what
        changed, and from which iteration, is appended to config_history.yaml and config.yaml is rewritten
        with the settings now in force, so that test.py, gather_results.py and ablate.py's tables show
        the run with the settings it ended with, and its history."""
        path = self.run_dir / "config.yaml"
        try:
            before = to_dict(load_config(path))
        except ConfigError:  # missing or unusable: the settings the checkpoint was written with
            before = saved or {}
        try:
            if not before:
                save_config(self.cfg, path)
                return
            changes = record_settings(self.run_dir, before, self.cfg, self.iteration,
                                      time.strftime("%Y-%m-%d %H:%M:%S %Z"))
        except OSError as exc:
            raise TrainingError(self._write_failure(path, exc)) from exc
        if changes:
            (line,) = history_lines([{"iteration": self.iteration, "changed": changes}])
            logger.info(f"note: --resume: settings changed {line}; config.yaml now holds them, {HISTORY_FILE} "
                        "records the change")

    def _diverged(self, what: str, poisoned: int | None = None) -> TrainingDiverged:
        """The exception for a run that stopped being finite, naming a checkpoint to continue from that
        exists and holds finite weights. `poisoned`: the iteration of a state whose forward pass gave a
        non-finite loss; a checkpoint of that iteration diverges again at once whatever the lr, so the
        one before it (checkpoint.prev.pt) is put back in its place."""
        good = self._saved_iteration
        if good is not None and good == poisoned:
            previous = self.run_dir / PREVIOUS_STATE_FILE
            good = self._previous_iteration
            if self.topology.is_main:
                if good is None and previous.is_file():  # kept by an earlier process of this run
                    try:
                        good = int(safe_torch_load(previous)["iteration"])
                    except (CheckpointError, KeyError, TypeError, ValueError):
                        good = None
                if good is not None and previous.is_file():
                    previous.replace(self.state_path())
                else:
                    good = None
            self._saved_iteration, self._previous_iteration = good, None
        run = f"--logdir {self.run_dir.parent} --run_name {self.run_dir.name}"
        if good is not None:
            advice = (f"The last good checkpoint is {self.state_path()} (iteration {good}, finite weights): continue "
                      f"from it with a smaller learning rate, e.g. train.py {run} --resume "
                      f"--set lr={self.cfg.lr / 10:g} (or change beta / grad_clip the same way)")
        elif poisoned == 0:
            advice = ("The initial weights already give a non-finite loss, which no learning rate changes: check the "
                      "loss settings (loss.*, alpha, regularface) and the training images")
        else:
            advice = (f"No checkpoint before iteration {poisoned} is kept: start again with a smaller learning rate "
                      f"(train.py with another --run_name and --set lr={self.cfg.lr / 10:g})")
        return TrainingDiverged(f"{what}; stopped, no weights file written. {advice}")

    # ----------------------------------------------------------------------------- loop
    def _loader(self) -> torch.utils.data.DataLoader:
        sampler = GlobalBatchSampler(len(self.dataset), self.cfg.batch_size, self.cfg.seed, self.iteration,
                                     self.topology.rank, self.topology.world_size)
        self._iters_per_epoch = sampler.iters_per_epoch
        return training_loader(self.dataset, sampler, self.cfg.num_workers, pin_memory=self.device.type == "cuda")

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> StepMetrics:
        """One iteration on a batch, `labels` as the data loader gives them (on the host). Nothing is read
        back from the device, so the host can queue the next steps while this one runs: the metrics
        come back as tensors on the device, and a non-finite loss is noted there for the next check
        (`_raise_if_diverged`), unless `check_finite_every_step` asks for a check (a read) now."""
        cfg = self.cfg
        lr = learning_rate(cfg, self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        x = normalize_pixels(images.to(self.device, non_blocking=True))
        if cfg.channels_last and self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        # the centers work out a batch's classes from the host's labels; the training set's labels were
        # range-checked once, when it was opened
        host_labels = labels
        labels = labels.to(self.device, non_blocking=True)
        use_amp = cfg.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            features, logits = self.net(x, labels)
        features = features.float()
        # the loss's centers and Eq. 7 below share one gather of all ranks' labels and features a step
        global_batch = GlobalBatch(features, host_labels)
        ce = F.cross_entropy(logits.float(), labels)
        uniform = torch.zeros((), device=self.device)
        if cfg.alpha > 0:
            uniform = uniform_loss(self.centers.loss_centers_of(global_batch, check_labels=False),
                                   reduction=cfg.uniform_reduction, batch_size=cfg.batch_size)
        regular = torch.zeros((), device=self.device)
        if cfg.regularface > 0:
            regular = regularface_loss(self.model.head.weight)
        loss = ce + cfg.alpha * uniform + cfg.regularface * regular
        if cfg.check_finite_every_step:
            if not bool(torch.isfinite(loss)):
                raise self._diverged(f"loss is not finite at iteration {self.iteration + 1} (cross-entropy "
                                     f"{ce.item():.4g}, uniform {uniform.item():.4g})", poisoned=self.iteration)
        else:
            with torch.no_grad():
                noted = torch.stack([torch.full((), self.iteration + 1.0, dtype=torch.float64, device=self.device),
                                     ce.double(), uniform.double()])
                first = ~torch.isfinite(loss) & (self._first_non_finite[0] < 0)
                self._first_non_finite = torch.where(first, noted, self._first_non_finite)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        # Always called: with beta = 0 it still sets a class's center on its first appearance.
        self.centers.update_from(global_batch, cfg.beta, check_labels=False,
                                 check_finite=cfg.check_finite_every_step)
        self.iteration += 1
        with torch.no_grad():
            cosine = F.linear(F.normalize(features.detach()), F.normalize(self.model.head.weight.float()))
            accuracy = (cosine.argmax(1) == labels).float().mean()
        return StepMetrics(loss.detach(), ce.detach(), uniform.detach(), regular.detach(), accuracy)

    def fit(self) -> Path:
        """Train to `max_iters`, checkpointing every `checkpoint_every`; returns the final weights' path."""
        from tqdm import tqdm

        cfg, main = self.cfg, self.topology.is_main
        writer = None
        if main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir), purge_step=self.iteration or None)
            for warning in _truncate_jsonl(self.run_dir / METRICS_FILE, self.iteration):
                logger.warning(warning)
        if self._saved_iteration is None:
            self._checkpoint()  # the initial state: a run that diverges early still has a checkpoint to go back to
        bar = tqdm(total=cfg.max_iters, initial=self.iteration, disable=not (main and self.progress),
                   desc="train", unit="it", dynamic_ncols=True)
        sums, count, seen, t0 = self._no_sums(), 0, 0, time.perf_counter()
        loader = iter(self._loader()) if self.iteration < cfg.max_iters else None
        empty = 0
        try:
            while self.iteration < cfg.max_iters:
                images, labels, problems = next(loader)
                if main:
                    self._report(problems)
                # Every rank decides alike: a rank that skipped while the others stepped would leave
                # DDP's all-reduce waiting forever. So a batch empty on any rank is skipped by all.
                broken, empty_ranks = distributed.sum_over_ranks([len(problems), len(labels) == 0])
                self.broken_images += int(broken)
                if empty_ranks > 0:
                    empty += 1
                    if empty >= min(self._iters_per_epoch, 50):
                        raise TrainingError(self._nothing_decodes(empty))
                    continue
                empty = 0
                sums += self.step(images, labels).stacked()  # summed on the device, read at the log point
                count += 1
                seen += len(labels) * self.topology.world_size
                bar.update(1)
                if self.iteration % cfg.log_every == 0 or self.iteration == cfg.max_iters:
                    loss, accuracy = self._log_point(writer, sums, count, seen, t0)
                    bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}")
                    sums, count, seen, t0 = self._no_sums(), 0, 0, time.perf_counter()
                if cfg.eval_every and self.iteration % cfg.eval_every == 0:
                    self._raise_if_diverged()
                    self._evaluate(writer)
                if self.iteration % cfg.checkpoint_every == 0 or self.iteration == cfg.max_iters:
                    self._checkpoint()
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        bad = self._non_finite()  # the loop's last checkpoint has checked it; a resume at max_iters has not
        if bad is not None:
            raise self._diverged(f"{bad} are not finite at iteration {self.iteration}")
        weights = self.run_dir / weights_filename(cfg)
        if main:
            try:
                export_weights(weights, self.model.backbone, to_dict(cfg), self._export_extra())
            except OSError as exc:
                raise TrainingError(self._write_failure(weights, exc)) from exc
            (self.run_dir / PREVIOUS_STATE_FILE).unlink(missing_ok=True)  # the run is done: no way back needed
            if self.broken_images:
                logger.warning(f"note: {self.broken_images} unreadable or wrong-sized training images were skipped "
                               "in all (each time met; metrics.jsonl counts them as broken_images)")
        distributed.barrier()
        return weights

    def _report(self, problems: list[str]) -> None:
        """Name on the console the first few unusable images met that were not named before training."""
        for problem in problems:
            if problem in self._reported:
                continue
            self._new_problems += 1
            if self._new_problems <= 5:
                self._reported.add(problem)
                logger.warning(f"warning: skipped a training image: {problem}")
            elif self._new_problems == 6:
                logger.warning("warning: more training images cannot be used and are skipped; metrics.jsonl "
                               "counts them (broken_images)")

    def _nothing_decodes(self, batches: int) -> str:
        named = sorted(self._reported)[:3]
        example = f", e.g. {'; '.join(named)}" if named else ""
        return (f"training set {self.cfg.dataset.train}: no image of the last {batches} batches could be used "
                f"{'(on one process at least) ' if self.topology.world_size > 1 else ''}"
                f"({self.broken_images} unreadable or wrong-sized images met so far{example}); it holds no "
                "decodable aligned face of input_size: check the files (preprocess.py writes such a folder)")

    def _export_extra(self) -> dict:
        extra = {"head": {k: v.detach().cpu() for k, v in self.model.head.state_dict().items()},
                 "classes": list(self.dataset.classes), "iteration": self.iteration}
        if isinstance(self.centers, ClassCenters):
            extra["centers"] = self.centers.centers.detach().cpu()
            extra["centers_initialized"] = self.centers.initialized.detach().cpu()
        return extra

    def _no_sums(self) -> torch.Tensor:
        """Sums of (loss, ce, uniform, regular, accuracy) over the steps since the last log point: none yet."""
        return torch.zeros(5, dtype=torch.float64, device=self.device)

    def _log_point(self, writer, sums: torch.Tensor, count: int, seen: int, t0: float) -> tuple[float, float]:
        """A log point: one read of the device for all it needs (the first non-finite step, the metrics
        summed since the last point and, on the main process, the log's figures of the head, centers and
        weights), then the divergence check, then metrics.jsonl and TensorBoard. Returns the window's
        mean loss and accuracy (for the progress bar)."""
        figures = self._figures() if writer is not None else {}
        values = torch.cat([self._first_non_finite, sums,
                            *(value.reshape(1).to(torch.float64) for value in figures.values())]).tolist()
        images_per_s = seen / max(time.perf_counter() - t0, 1e-9)  # after the read: the steps are done
        self._raise_if_diverged(values[:3])
        means = [value / count for value in values[3:8]]
        self._log(writer, means, dict(zip(figures, values[8:])), images_per_s)
        return means[0], means[4]

    def _figures(self) -> dict[str, torch.Tensor]:
        """The log's figures that live on the device, as tensors, to be read with the metrics."""
        head, figures = self.model.head, {}
        if hasattr(head, "lambda_at"):  # A-Softmax (not hasattr "lamb": evaluating that property reads the device)
            figures["head_iteration"] = head.iteration  # lambda follows from it (head.lambda_at)
        centers = self._center_matrix()
        if centers is not None and len(centers) > 1:
            # one sweep over the pairs of centers for both figures (each O(M^2 d))
            figures["mean_min_center_distance"], figures["mean_min_center_angle"] = nearest_center_figures(centers)
        if isinstance(self.centers, WeightCenters) and "mean_min_center_angle" in figures:
            # the centers are the head's weights: their angle is the one just computed
            figures["mean_min_weight_angle"] = figures["mean_min_center_angle"]
        else:
            figures["mean_min_weight_angle"] = mean_min_angle_tensor(head.weight.detach())
        return figures

    def _log(self, writer, means: list[float], figures: dict[str, float], images_per_s: float) -> None:
        if writer is None:
            return
        loss, ce, uni, reg, acc = means
        head = self.model.head
        record = {"iteration": self.iteration, "loss": loss, "cross_entropy": ce, "uniform_loss": uni,
                  "accuracy": acc, "lr": learning_rate(self.cfg, self.iteration - 1), "images_per_s": images_per_s,
                  "broken_images": self.broken_images}
        if self.cfg.regularface > 0:
            record["regularface_loss"] = reg
        if "head_iteration" in figures:
            record["lambda"] = head.lambda_at(int(figures["head_iteration"]))
        for key in ("mean_min_center_distance", "mean_min_center_angle", "mean_min_weight_angle"):
            if key in figures:
                record[key] = figures[key]
        for key, value in record.items():
            if key != "iteration":
                writer.add_scalar(f"train/{key}", value, self.iteration)
        self._append_metrics(record)

    def _append_metrics(self, record: dict) -> None:
        path = self.run_dir / METRICS_FILE
        try:
            with open(path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise TrainingError(self._write_failure(path, exc)) from exc

    def _evaluate(self, writer) -> None:
        """LFW-protocol accuracy of the current backbone, into the same TensorBoard and metrics.jsonl."""
        if writer is None:
            return
        backbone = self.model.backbone
        backbone.eval()
        try:
            result = evaluate_pairs(backbone, self.cfg.dataset.test, self.cfg.dataset.pairs, num_workers=0,
                                    device=str(self.device), progress=False)
        finally:
            backbone.train()
        writer.add_scalar("lfw/accuracy", result["accuracy_mean"], self.iteration)
        writer.add_scalar("lfw/accuracy_std", result["accuracy_std"], self.iteration)
        self._append_metrics({"iteration": self.iteration, "lfw_accuracy": result["accuracy_mean"],
                              "lfw_accuracy_std": result["accuracy_std"]})

    def _center_matrix(self) -> torch.Tensor | None:
        if isinstance(self.centers, ClassCenters):
            return self.centers.initialized_centers()
        return self.model.head.weight.detach()


def train(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
          lock: FolderLock | None = None) -> Path:
    """Train (or with `resume`, continue) the run in `run_dir`; returns the final weights' path. Raises
    TrainingError (TrainingDiverged included), CheckpointError, ValueError or FileNotFoundError with a
    one-line message. `lock`: the run folder's lock when the caller holds it already."""
    trainer = None
    try:
        trainer = Trainer(cfg, run_dir, resume=resume, progress=progress, lock=lock)
        return trainer.fit()
    finally:
        if trainer is not None:
            trainer.close()
        distributed.teardown()
