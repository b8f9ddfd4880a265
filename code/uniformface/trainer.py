"""The training loop: SphereFace backbone + margin head + UniformFace's uniform loss on moving class
centers (Duan et al. 2019, Eq. 6-7), one loop for one process or many (torchrun + DDP).

Objective per iteration: L = CE(head(f(x)), y) + alpha * L_u(centers) [+ regularface * L_r(W)], then
after the optimizer step the centers move: c <- c - beta * delta_c (Eq. 7).
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from . import distributed
from .centers import ClassCenters, WeightCenters, mean_min_distance
from .checkpoint import atomic_torch_save, atomic_write_text, export_weights
from .config import Config, save_config, to_dict
from .data import GlobalBatchSampler, collate_skip_broken, open_train_set
from .heads import build_head
from .losses import regularface_loss, uniform_loss
from .models import build_model, normalize_pixels

STATE_FILE = "checkpoint.pt"


class TrainingDiverged(RuntimeError):
    pass


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
        kwargs.update(base=loss.base, gamma=loss.gamma, power=loss.power, lambda_min=loss.lambda_min)
    return kwargs


def build_centers(cfg: Config, num_classes: int, head: nn.Module):
    if cfg.center_mode == "weight":
        return WeightCenters(head, scope="batch" if cfg.compute_in_batch else "all", normalize=cfg.normalize_centers)
    return ClassCenters(num_classes, cfg.emb_dim, scope="batch" if cfg.compute_in_batch else "all",
                        normalize=cfg.normalize_centers)


@dataclass
class StepMetrics:
    loss: float
    ce: float
    uniform: float
    regular: float
    accuracy: float


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_jsonl(path: Path, last_iteration: int) -> None:
    """After a resume, drop log lines the crashed run wrote past its last checkpoint."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["iteration"] <= last_iteration]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.topology, self.device = distributed.setup(cfg.resolved_device())
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2 ** 32)
        random.seed(cfg.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.deterministic
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        self.dataset = open_train_set(cfg.dataset.train, exclude=cfg.dataset.exclude_identities,
                                      min_images_per_class=cfg.min_images_per_class, flip=cfg.flip, seed=cfg.seed)
        self._check_image_size()
        num_classes = self.dataset.num_classes
        if num_classes < 2:
            raise ValueError(f"training set {cfg.dataset.train} has {num_classes} class; at least 2 are needed")

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
        if resume:
            self._load_state()
        elif self.topology.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")

        self.net: nn.Module = self.model
        if self.topology.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.net = torch.compile(self.net)

    def _check_image_size(self) -> None:
        """Fail before training when the aligned faces do not have the network's input size (e.g.
        insightface's 112x112 .rec against the 112x96 default)."""
        for index in range(min(len(self.dataset), 8)):
            image, _ = self.dataset[index]
            if image is not None:
                if list(image.shape[1:]) != list(self.cfg.input_size):
                    height, width = image.shape[1:]
                    raise ValueError(
                        f"training images in {self.cfg.dataset.train} are {height}x{width} but input_size is "
                        f"{self.cfg.input_size}; set --set input_size=[{height},{width}] or align with "
                        f"preprocess.py --output_size {self.cfg.input_size[0]}x{self.cfg.input_size[1]}")
                return

    # ----------------------------------------------------------------------------- state
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def _save_state(self) -> None:
        if not self.topology.is_main:
            return
        state = {"iteration": self.iteration, "model": self.model.state_dict(),
                 "centers": self.centers.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "rng": _rng_state(), "broken_images": self.broken_images, "config": to_dict(self.cfg),
                 "classes": self.dataset.classes}
        atomic_torch_save(state, self.state_path())

    def _load_state(self) -> None:
        path = self.state_path()
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["classes"] != self.dataset.classes:
            raise ValueError(f"--resume: the training set's classes differ from those of {path}")
        self.model.load_state_dict(state["model"])
        self.centers.load_state_dict(state["centers"])
        self.optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        self.iteration = state["iteration"]
        self.broken_images = state.get("broken_images", 0)

    # ----------------------------------------------------------------------------- loop
    def _loader(self) -> DataLoader:
        sampler = GlobalBatchSampler(len(self.dataset), self.cfg.batch_size, self.cfg.seed, self.iteration,
                                     self.topology.rank, self.topology.world_size)
        workers = self.cfg.num_workers
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=workers,
                          collate_fn=collate_skip_broken, pin_memory=self.device.type == "cuda",
                          persistent_workers=workers > 0, prefetch_factor=4 if workers else None)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> StepMetrics:
        cfg = self.cfg
        lr = learning_rate(cfg, self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        x = normalize_pixels(images.to(self.device, non_blocking=True))
        if cfg.channels_last and self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        use_amp = cfg.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            features, logits = self.net(x, labels)
        features = features.float()
        ce = F.cross_entropy(logits.float(), labels)
        uniform = torch.zeros((), device=self.device)
        if cfg.alpha > 0:
            uniform = uniform_loss(self.centers.loss_centers(features, labels))
        regular = torch.zeros((), device=self.device)
        if cfg.regularface > 0:
            regular = regularface_loss(self.model.head.weight)
        loss = ce + cfg.alpha * uniform + cfg.regularface * regular
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss is not finite at iteration {self.iteration + 1} (cross-entropy {ce.item():.4g}, "
                f"uniform {uniform.item():.4g}); stopping. The last good checkpoint is {self.state_path()} "
                f"(resume with --resume after changing lr/beta/grad_clip via --set).")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        # Always called: with beta = 0 it still sets a class's center on its first appearance.
        self.centers.update(features.detach(), labels, cfg.beta)
        self.iteration += 1
        with torch.no_grad():
            cosine = F.linear(F.normalize(features.detach()), F.normalize(self.model.head.weight.float()))
            accuracy = (cosine.argmax(1) == labels).float().mean()
        return StepMetrics(loss.item(), ce.item(), uniform.item(), regular.item(), accuracy.item())

    def fit(self) -> Path:
        """Train to `max_iters`, checkpointing every `checkpoint_every`; returns the final weights' path."""
        from tqdm import tqdm

        cfg, main = self.cfg, self.topology.is_main
        writer = None
        if main:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir), purge_step=self.iteration or None)
            _truncate_jsonl(self.run_dir / "metrics.jsonl", self.iteration)
        bar = tqdm(total=cfg.max_iters, initial=self.iteration, disable=not (main and self.progress),
                   desc="train", unit="it", dynamic_ncols=True)
        sums, count, seen, t0 = np.zeros(5), 0, 0, time.perf_counter()
        loader = iter(self._loader()) if self.iteration < cfg.max_iters else None
        try:
            while self.iteration < cfg.max_iters:
                images, labels, n_broken = next(loader)
                self.broken_images += int(distributed.sum_scalar(n_broken, self.device))
                if len(labels) == 0:
                    continue
                m = self.step(images, labels)
                sums += [m.loss, m.ce, m.uniform, m.regular, m.accuracy]
                count += 1
                seen += len(labels) * self.topology.world_size
                bar.update(1)
                if self.iteration % cfg.log_every == 0 or self.iteration == cfg.max_iters:
                    elapsed = time.perf_counter() - t0
                    self._log(writer, sums / count, seen / max(elapsed, 1e-9))
                    bar.set_postfix(loss=f"{sums[0] / count:.3f}", acc=f"{sums[4] / count:.3f}")
                    sums, count, seen, t0 = np.zeros(5), 0, 0, time.perf_counter()
                if cfg.eval_every and self.iteration % cfg.eval_every == 0:
                    self._evaluate(writer)
                if self.iteration % cfg.checkpoint_every == 0 or self.iteration == cfg.max_iters:
                    self._save_state()
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        weights = self.run_dir / weights_filename(cfg)
        if main:
            export_weights(weights, self.model.backbone, to_dict(cfg), self._export_extra())
        distributed.barrier()
        return weights

    def _export_extra(self) -> dict:
        extra = {"head": {k: v.detach().cpu() for k, v in self.model.head.state_dict().items()},
                 "classes": list(self.dataset.classes), "iteration": self.iteration}
        if isinstance(self.centers, ClassCenters):
            extra["centers"] = self.centers.centers.detach().cpu()
            extra["centers_initialized"] = self.centers.initialized.detach().cpu()
        return extra

    def _log(self, writer, means: np.ndarray, images_per_s: float) -> None:
        if writer is None:
            return
        loss, ce, uni, reg, acc = (float(v) for v in means)
        head = self.model.head
        record = {"iteration": self.iteration, "loss": loss, "cross_entropy": ce, "uniform_loss": uni,
                  "accuracy": acc, "lr": learning_rate(self.cfg, self.iteration - 1), "images_per_s": images_per_s,
                  "broken_images": self.broken_images}
        if self.cfg.regularface > 0:
            record["regularface_loss"] = reg
        if hasattr(head, "lamb"):
            record["lambda"] = float(head.lamb)
        centers = self._center_matrix()
        if centers is not None and len(centers) > 1:
            record["mean_min_center_distance"] = float(mean_min_distance(centers))
        for key, value in record.items():
            if key != "iteration":
                writer.add_scalar(f"train/{key}", value, self.iteration)
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def _evaluate(self, writer) -> None:
        """LFW-protocol accuracy of the current backbone, into the same TensorBoard and metrics.jsonl."""
        if writer is None:
            return
        from .evaluate import evaluate_pairs

        backbone = self.model.backbone
        backbone.eval()
        try:
            result = evaluate_pairs(backbone, self.cfg.dataset.test, self.cfg.dataset.pairs, num_workers=0,
                                    device=str(self.device), progress=False)
        finally:
            backbone.train()
        writer.add_scalar("lfw/accuracy", result["accuracy_mean"], self.iteration)
        writer.add_scalar("lfw/accuracy_std", result["accuracy_std"], self.iteration)
        with open(self.run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"iteration": self.iteration, "lfw_accuracy": result["accuracy_mean"],
                                     "lfw_accuracy_std": result["accuracy_std"]}) + "\n")

    def _center_matrix(self) -> torch.Tensor | None:
        if isinstance(self.centers, ClassCenters):
            return self.centers.centers[self.centers.initialized].detach()
        return self.model.head.weight.detach()


def train(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    try:
        return Trainer(cfg, run_dir, resume=resume, progress=progress).fit()
    finally:
        distributed.teardown()
