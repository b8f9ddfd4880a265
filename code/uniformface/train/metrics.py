"""What a run logs, into metrics.jsonl and TensorBoard: at each log point the steps' figures (summed on the
device and read there once) with the head's and the centers' figures; at each evaluation point whatever
the evaluators passed to the trainer return."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..base.atomic import atomic_write_text
from ..base.paths import shown
from ..nn.centers import ClassCenters, WeightCenters, mean_min_angle_tensor, nearest_center_figures
from .step import StepMetrics

logger = logging.getLogger(__name__)

# An evaluation during training: called with the backbone (in eval mode, on the training device) and the
# iteration, on the main process only, every `eval_every` iterations; returns figures by their
# metrics.jsonl key (`tensorboard_tag` gives their TensorBoard name).
Evaluator = Callable[[nn.Module, int], dict[str, float]]


def tensorboard_tag(key: str) -> str:
    """An evaluation figure's TensorBoard name: a key holding '/' as it is (`val/lfw`), else its first '_'
    as '/' (`lfw_accuracy` -> `lfw/accuracy`)."""
    return key if "/" in key else key.replace("_", "/", 1)


class Window:
    """The steps since the last log point: their metrics summed on the device, their number, the images
    they saw (on all ranks) and when the window began."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        # sums of (loss, ce, uniform, regular, accuracy)
        self.sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        self.steps, self.images, self.start = 0, 0, time.perf_counter()

    def add(self, metrics: StepMetrics, images: int) -> None:
        self.sums += metrics.stacked()
        self.steps += 1
        self.images += images


def center_matrix(centers: ClassCenters | WeightCenters, head: nn.Module) -> torch.Tensor | None:
    """The centers the log's figures describe: the initialised class centers, or the head's weights."""
    if isinstance(centers, ClassCenters):
        return centers.initialized_centers()
    return head.weight.detach()


def log_figures(head: nn.Module, centers: ClassCenters | WeightCenters) -> dict[str, torch.Tensor]:
    """The log's figures that live on the device, as tensors, to be read with the metrics."""
    figures = {}
    if hasattr(head, "lambda_at"):  # A-Softmax (not hasattr "lamb": evaluating that property reads the device)
        figures["head_iteration"] = head.iteration  # lambda follows from it (head.lambda_at)
    matrix = center_matrix(centers, head)
    if matrix is not None and len(matrix) > 1:
        # one sweep over the pairs of centers for both figures (each O(M^2 d))
        figures["mean_min_center_distance"], figures["mean_min_center_angle"] = nearest_center_figures(matrix)
    if isinstance(centers, WeightCenters) and "mean_min_center_angle" in figures:
        # the centers are the head's weights: their angle is the one just computed
        figures["mean_min_weight_angle"] = figures["mean_min_center_angle"]
    else:
        figures["mean_min_weight_angle"] = mean_min_angle_tensor(head.weight.detach())
    return figures


def training_record(iteration: int, means: list[float], figures: dict[str, float], head: nn.Module, lr: float,
                    images_per_s: float, broken_images: int, regularface: bool) -> dict:
    """A log point's line of metrics.jsonl: the window's mean (loss, ce, uniform, regular, accuracy), the
    regularface loss when it is on, A-Softmax's lambda and the centers' figures."""
    loss, ce, uniform, regular, accuracy = means
    record = {"iteration": iteration, "loss": loss, "cross_entropy": ce, "uniform_loss": uniform,
              "accuracy": accuracy, "lr": lr, "images_per_s": images_per_s, "broken_images": broken_images}
    if regularface:
        record["regularface_loss"] = regular
    if "head_iteration" in figures:
        record["lambda"] = head.lambda_at(int(figures["head_iteration"]))
    for key in ("mean_min_center_distance", "mean_min_center_angle", "mean_min_weight_angle"):
        if key in figures:
            record[key] = figures[key]
    return record


def truncate_jsonl(path: Path, last_iteration: int) -> list[str]:
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
            warnings.append(f"warning: {path}: line {number} is not a complete JSON record ({shown(line, 40)}; cut "
                            "off by a killed run?); dropped")
            continue
        if iteration <= last_iteration:
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))
    return warnings


class MetricsLog:
    """A run folder's metrics.jsonl (`path`) and TensorBoard events, continued from `iteration` (lines and
    events past it, which a killed run wrote after its last checkpoint, are dropped). A failed append
    raises OSError."""

    def __init__(self, run_dir: Path, path: Path, iteration: int):
        from torch.utils.tensorboard import SummaryWriter

        self.path = path
        self.writer = SummaryWriter(str(run_dir), purge_step=iteration or None)
        for warning in truncate_jsonl(path, iteration):
            logger.warning(warning)

    def training(self, record: dict) -> None:
        """A log point's record (`training_record`): TensorBoard's `train/<key>`, and a line."""
        for key, value in record.items():
            if key != "iteration":
                self.writer.add_scalar(f"train/{key}", value, record["iteration"])
        self.append(record)

    def evaluation(self, iteration: int, figures: dict[str, float]) -> None:
        """The evaluators' figures at `iteration`: TensorBoard (`tensorboard_tag`), and one line."""
        for key, value in figures.items():
            self.writer.add_scalar(tensorboard_tag(key), value, iteration)
        self.append({"iteration": iteration, **figures})

    def append(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.writer.close()
