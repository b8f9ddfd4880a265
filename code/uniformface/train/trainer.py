"""The training loop: SphereFace backbone + margin head + UniformFace's uniform loss on moving class
centers (Duan et al. 2019, Eq. 6-7), one loop for one process or many (torchrun + DDP), in one run folder.

Its parts lie beside it: `build` (network, centers, solver), `step` (one iteration), `checkpoint` (the
run folder's state), `divergence` (a loss or state that stops being finite), `metrics` (metrics.jsonl and
TensorBoard), `training_set` (its checks, the images skipped).
Evaluation during training comes in as callbacks (`evaluators`, built by the caller): the loop imports no
evaluation module.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..base import distributed
from ..base.atomic import remove_stale_partials
from ..base.config import HISTORY_FILE, Config, save_config, to_dict
from ..base.devices import resolve_device
from ..base.locks import FolderBusy, FolderLock
from ..data import GlobalBatchSampler, open_train_set, training_loader
from .build import build_parts, flush_denormals_on_cpu, seed_everything, wrap_for_ranks
from .checkpoint import (CONFIG_FILE, Checkpoints, export_weights, record_resumed_settings, restore_training_state,
                         training_state, weights_extra)
from .divergence import DivergenceWatch, TrainingError, features_finite, non_finite_part
from .metrics import Evaluator, MetricsLog, Window, log_figures, training_record
from .step import StepMetrics, learning_rate, training_step
from .training_set import SkippedImages, check_training_set

logger = logging.getLogger(__name__)

# The run folder's files (beside config.yaml, its history, TensorBoard's events and the final weights).
STATE_FILE = "checkpoint.pt"
PREVIOUS_STATE_FILE = "checkpoint.prev.pt"  # kept while training: see checkpoint.Checkpoints
METRICS_FILE = "metrics.jsonl"


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


def weights_filename(cfg: Config) -> str:
    return f"{cfg.model_name}_{cfg.emb_dim}.pt"


class Trainer:
    """One run in one run folder. The folder is locked (`locks.FolderLock`) from construction until
    `close()` (which `train()` calls): a second run into it is refused at once, naming this one. Pass
    `lock` when the caller already holds the folder's lock (ablate.py holds its settings' folders).
    `evaluators` (`metrics.Evaluator`) run every `eval_every` iterations and at the last, on the main process,
    their figures logged, while the other processes wait."""

    # what it trains (build.TrainingParts), by the names callers have always read
    model = property(lambda self: self.parts.model)
    net = property(lambda self: self.parts.net)
    centers = property(lambda self: self.parts.centers)
    optimizer = property(lambda self: self.parts.optimizer)

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
                 lock: FolderLock | None = None, evaluators: Sequence[Evaluator] = ()):
        self.cfg, self.run_dir, self.progress, self.evaluators = cfg, Path(run_dir), progress, list(evaluators)
        self.lock, self._own_lock = lock, False
        self.topology, self.device = distributed.setup(str(check_device(cfg.resolved_device())))
        self.checkpoints = Checkpoints(self.run_dir / STATE_FILE, self.run_dir / PREVIOUS_STATE_FILE,
                                       f"--logdir {self.run_dir.parent} --run_name {self.run_dir.name}")
        self.watch = DivergenceWatch(self.checkpoints, cfg.lr, self.device, writes=self.topology.is_main)
        if self.topology.is_main:
            self._lock_folder()
            if cfg.eval_every and not self.evaluators:
                logger.info("note: eval_every is set, but no evaluator was given to the trainer: nothing is "
                            "evaluated during training (train.py gives the LFW-protocol one)")
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
        return [STATE_FILE, PREVIOUS_STATE_FILE, CONFIG_FILE, HISTORY_FILE, METRICS_FILE,
                weights_filename(self.cfg), "diverged.txt"]

    def close(self) -> None:
        """Release the folder's lock (when this Trainer took it)."""
        if self._own_lock and self.lock is not None:
            self.lock.release()

    @contextlib.contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """A failed write of `path` as one TrainingError line: the reason, what is intact, what to do."""
        try:
            yield
        except OSError as exc:
            raise TrainingError(self.checkpoints.write_failure(path, exc)) from exc

    def _build(self, resume: bool) -> None:
        cfg, main = self.cfg, self.topology.is_main
        seed_everything(cfg, self.device)
        flush_denormals_on_cpu(self.device)
        self.dataset = open_train_set(cfg.dataset.train, exclude=cfg.dataset.exclude_identities,
                                      min_images_per_class=cfg.min_images_per_class, flip=cfg.flip, seed=cfg.seed)
        check_training_set(self.dataset, cfg, report=main)
        self.skipped = SkippedImages(self.dataset, cfg.dataset.train)
        self.parts = build_parts(cfg, self.dataset.num_classes, self.device)
        self.iteration = 0
        self.broken_images = 0
        if resume and not self.state_path().is_file():
            # stopped before its first checkpoint (or never started): a job script that always passes
            # --resume starts the run here
            if main:
                logger.info(f"note: --resume: {self.run_dir} holds no checkpoint yet; starting the run from "
                            "iteration 0")
            resume = False
        if resume:
            saved = self._load_state()
            if main:
                with self._writing(self.run_dir / CONFIG_FILE):
                    note = record_resumed_settings(self.run_dir, cfg, self.iteration, saved)
                if note:
                    logger.info(note)
        elif main:
            with self._writing(self.run_dir / CONFIG_FILE):
                save_config(cfg, self.run_dir / CONFIG_FILE)
        wrap_for_ranks(self.parts, cfg, self.topology.world_size)

    # ----------------------------------------------------------------------------- state
    def state_path(self) -> Path:
        return self.checkpoints.path

    def _load_state(self) -> dict | None:
        """Continue from checkpoint.pt; returns the settings it was written with (its "config")."""
        state = self.checkpoints.load()
        if state["classes"] != self.dataset.classes:
            raise ValueError(f"--resume: the training set's classes differ from those of {self.state_path()}")
        restore_training_state(self.parts, state, self.state_path())
        self.iteration = self.checkpoints.saved_iteration = state["iteration"]
        self.broken_images = int(state.get("broken_images", 0))
        return state.get("config") if isinstance(state.get("config"), dict) else None

    def _checkpoint(self) -> None:
        """Save the state (main rank), unless it is not finite: then the run stops (a checkpoint is never
        replaced by a broken state). The one it replaces is kept (checkpoint.Checkpoints)."""
        self.watch.raise_if_noted(self.iteration)
        bad = non_finite_part(self.model, self.centers, self.optimizer, self.device)
        if bad is not None:
            raise self.watch.diverged(f"{bad} are not finite after iteration {self.iteration}")
        state = None  # the other ranks write no files
        if self.topology.is_main:
            state = training_state(self.parts, self.iteration, self.broken_images, to_dict(self.cfg),
                                   list(self.dataset.classes))
        with self._writing(self.state_path()):
            self.checkpoints.save(state, self.iteration)

    # ----------------------------------------------------------------------------- loop
    def _loader(self) -> torch.utils.data.DataLoader:
        sampler = GlobalBatchSampler(len(self.dataset), self.cfg.batch_size, self.cfg.seed, self.iteration,
                                     self.topology.rank, self.topology.world_size)
        self._iters_per_epoch = sampler.iters_per_epoch
        return training_loader(self.dataset, sampler, self.cfg.num_workers, pin_memory=self.device.type == "cuda")

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> StepMetrics:
        """One iteration on a batch (`step.training_step`), `labels` as the data loader gives them (on the
        host); reads nothing back from the device."""
        metrics = training_step(self.cfg, self.parts, self.watch, self.iteration, images, labels)
        self.iteration += 1
        return metrics

    def fit(self) -> Path:
        """Train to `max_iters`, checkpointing every `checkpoint_every`; returns the final weights' path."""
        cfg, main = self.cfg, self.topology.is_main
        log = MetricsLog(self.run_dir, self.run_dir / METRICS_FILE, self.iteration) if main else None
        try:
            if self.checkpoints.saved_iteration is None:
                self._checkpoint()  # the initial state: a run that diverges early still has a checkpoint to go back to
            last_images = self._loop(log)
        finally:
            if log is not None:
                log.close()
        bad = non_finite_part(self.model, self.centers, self.optimizer, self.device)
        if bad is not None:  # the loop's last checkpoint has checked it; a resume at max_iters has not
            raise self.watch.diverged(f"{bad} are not finite at iteration {self.iteration}")
        self._check_features(last_images)
        weights = self.run_dir / weights_filename(cfg)
        if main:
            with self._writing(weights):
                export_weights(weights, self.model.backbone, to_dict(cfg),
                               weights_extra(self.parts, self.dataset.classes, self.iteration))
            (self.run_dir / PREVIOUS_STATE_FILE).unlink(missing_ok=True)  # the run is done: no way back needed
            if self.broken_images:
                logger.warning(f"note: {self.broken_images} unreadable or wrong-sized training images were skipped "
                               "in all (each time met; metrics.jsonl counts them as broken_images)")
        distributed.barrier()
        return weights

    def _loop(self, log: MetricsLog | None) -> torch.Tensor | None:
        """The steps up to `max_iters`, with the log points, evaluations and checkpoints on the way; returns
        the images of the last step (None when none was left to take)."""
        from tqdm import tqdm

        cfg, main = self.cfg, self.topology.is_main
        bar = tqdm(total=cfg.max_iters, initial=self.iteration, disable=not (main and self.progress),
                   desc="train", unit="it", dynamic_ncols=True)
        window, empty = Window(self.device), 0
        loader = iter(self._loader()) if self.iteration < cfg.max_iters else None
        images = None
        try:
            while self.iteration < cfg.max_iters:
                images, labels, problems = next(loader)
                if main:
                    self.skipped.met(problems)
                # Every rank decides alike: a rank that skipped while the others stepped would leave
                # DDP's all-reduce waiting forever. So a batch empty on any rank is skipped by all.
                broken, empty_ranks = distributed.sum_over_ranks([len(problems), len(labels) == 0])
                self.broken_images += int(broken)
                if empty_ranks > 0:
                    empty += 1
                    if empty >= min(self._iters_per_epoch, 50):
                        raise TrainingError(self.skipped.nothing_decodes(empty, self.broken_images,
                                                                         self.topology.world_size > 1))
                    continue
                empty = 0
                # summed on the device, read at the log point
                window.add(self.step(images, labels), len(labels) * self.topology.world_size)
                bar.update(1)
                if self.iteration % cfg.log_every == 0 or self.iteration == cfg.max_iters:
                    loss, accuracy = self._log_point(log, window)
                    bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}")
                    window.reset()
                if self.evaluators and cfg.eval_every and (self.iteration % cfg.eval_every == 0
                                                           or self.iteration == cfg.max_iters):
                    self._evaluate(log)
                if self.iteration % cfg.checkpoint_every == 0 or self.iteration == cfg.max_iters:
                    self._checkpoint()
        finally:
            bar.close()
        return images

    def _check_features(self, images: torch.Tensor | None) -> None:
        """TrainingDiverged when the weights about to be written give non-finite features for a batch of
        training images (`images`, or the loader's first batch after a resume at max_iters); all ranks agree."""
        if images is None or len(images) == 0:
            images = next(iter(self._loader()))[0]
        finite = len(images) == 0 or features_finite(self.model.backbone, images, self.device)
        (not_finite,) = distributed.sum_over_ranks([not finite])
        if not_finite:
            raise self.watch.diverged(f"the weights of iteration {self.iteration} give non-finite features (a batch "
                                      "of training images through the network, as test.py would)",
                                      poisoned=self.iteration)

    def _log_point(self, log: MetricsLog | None, window: Window) -> tuple[float, float]:
        """A log point: one read of the device for all it needs (the first non-finite step, the window's
        sums and, on the main process, the log's figures of the head, centers and weights), then the
        divergence check, then metrics.jsonl and TensorBoard. Returns the window's mean loss and accuracy
        (for the progress bar)."""
        figures = log_figures(self.model.head, self.centers) if log is not None else {}
        values = torch.cat([self.watch.noted, window.sums,
                            *(value.reshape(1).to(torch.float64) for value in figures.values())]).tolist()
        images_per_s = window.images / max(time.perf_counter() - window.start, 1e-9)  # after the read: steps done
        self.watch.raise_if_noted(self.iteration, values[:3])
        means = [value / window.steps for value in values[3:8]]
        if log is not None:
            record = training_record(self.iteration, means, dict(zip(figures, values[8:])), self.model.head,
                                     lr=learning_rate(self.cfg, self.iteration - 1), images_per_s=images_per_s,
                                     broken_images=self.broken_images, regularface=self.cfg.regularface > 0)
            with self._writing(log.path):
                log.training(record)
        return means[0], means[4]

    def _evaluate(self, log: MetricsLog | None) -> None:
        """The evaluators on the main process (the backbone in eval mode meanwhile), their figures logged;
        the other processes wait at one barrier."""
        self.watch.raise_if_noted(self.iteration)
        if log is not None:
            backbone, figures = self.model.backbone, {}
            backbone.eval()
            try:
                for evaluate in self.evaluators:
                    figures.update(evaluate(backbone, self.iteration))
            finally:
                backbone.train()
            with self._writing(log.path):
                log.evaluation(self.iteration, figures)
        distributed.barrier()


def train(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
          lock: FolderLock | None = None, evaluators: Sequence[Evaluator] = ()) -> Path:
    """Train (or with `resume`, continue) the run in `run_dir`; returns the final weights' path. Raises
    TrainingError (TrainingDiverged included), CheckpointError, ValueError or FileNotFoundError with a
    one-line message. `lock`: the run folder's lock when the caller holds it already; `evaluators`: see
    Trainer."""
    trainer = None
    try:
        trainer = Trainer(cfg, run_dir, resume=resume, progress=progress, lock=lock, evaluators=evaluators)
        return trainer.fit()
    finally:
        if trainer is not None:
            trainer.close()
        distributed.teardown()
