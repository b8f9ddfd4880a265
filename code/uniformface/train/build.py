"""What a run trains, built from its config: the network (SphereFace backbone + margin head), the class
centers of Eq. 6-7, and the SGD solver with the official prototxt's multipliers."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from ..base.config import Config
from ..base.registry import BACKBONES
from ..nn.centers import ClassCenters, WeightCenters
from ..nn.heads import build_head
from ..nn.models import build_model


class Recognizer(nn.Module):
    """Backbone and head in one module so that DDP synchronises both."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor, labels: torch.Tensor):
        features = self.backbone(images)
        return features, self.head(features, labels)


@dataclass
class TrainingParts:
    """A run's trained state on its device. `net` is `model` as the step calls it: wrapped in DDP when
    several processes train, compiled with `compile`."""
    model: Recognizer
    centers: ClassCenters | WeightCenters
    optimizer: torch.optim.SGD
    device: torch.device
    net: nn.Module


def parameter_groups(model: nn.Module, weight_decay: float, family: str = "sphereface") -> list[dict]:
    """The solver's groups as the backbone's own release trains it. SphereFace's (and the UniformFace
    figure's network): Caffe's multipliers from `sphereface_model.prototxt`, biases at 2x the rate without
    weight decay (`param { lr_mult: 2 decay_mult: 0 }`), weights and PReLU slopes at 1x with decay.
    insightface's IResNet (`family` "iresnet"): arcface_torch's `train_v2.py`, every parameter, the class
    weights included, at 1x with decay."""
    if family == "iresnet":
        return [{"params": list(model.parameters()), "weight_decay": weight_decay, "lr_mult": 1.0}]
    biases = [p for name, p in model.named_parameters() if name.endswith(".bias")]
    others = [p for name, p in model.named_parameters() if not name.endswith(".bias")]
    return [{"params": others, "weight_decay": weight_decay, "lr_mult": 1.0},
            {"params": biases, "weight_decay": 0.0, "lr_mult": 2.0}]


def head_kwargs(cfg: Config) -> dict:
    """`build_head`'s keyword arguments from the config's `loss` section."""
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


def seed_everything(cfg: Config, device: torch.device) -> None:
    """Every generator seeded from `seed`; cuDNN and PyTorch made deterministic when `deterministic` asks."""
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2 ** 32)
    random.seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def flush_denormals_on_cpu(device: torch.device) -> None:
    """On a CPU, floats below 1.2e-38 read as zero. Once A-Softmax's softmax saturates, gradients that
    small fill the backward pass, and x86 handles each in microcode: a SphereFace-4 step went from 35 ms
    to 0.5-1.1 s. Added to a weight of any ordinary size they change nothing (docs/DESIGN.md §5.1)."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)


def build_parts(cfg: Config, num_classes: int, device: torch.device) -> TrainingParts:
    """Network, centers and solver for `num_classes` classes, on `device`; `net` is the model itself until
    `wrap_for_ranks` (called once a resumed state is loaded into it)."""
    backbone = build_model(cfg.model_name, cfg.emb_dim, tuple(cfg.input_size))
    head = build_head(cfg.loss.name, cfg.emb_dim, num_classes, **head_kwargs(cfg))
    model = Recognizer(backbone, head).to(device)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    centers = build_centers(cfg, num_classes, model.head).to(device)
    groups = parameter_groups(model, cfg.weight_decay, BACKBONES[cfg.model_name].family)
    optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return TrainingParts(model, centers, optimizer, device, net=model)


def wrap_for_ranks(parts: TrainingParts, cfg: Config, world_size: int) -> None:
    """`parts.net`: DDP over the processes when there are several (the ranks start from rank 0's weights),
    then torch.compile when `compile` asks."""
    if world_size > 1:
        ids = [parts.device.index] if parts.device.type == "cuda" else None
        parts.net = nn.parallel.DistributedDataParallel(parts.model, device_ids=ids)
    if cfg.compile:
        parts.net = torch.compile(parts.net)
