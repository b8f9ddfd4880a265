"""One training iteration (Duan et al. 2019, Eq. 6-7): L = CE(head(f(x)), y) + alpha * L_u(centers)
[+ regularface * L_r(W)], an SGD step, then the centers move: c <- c - beta * delta_c. Nothing is read back
from the device: the host can queue the next steps while this one runs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..base.config import Config
from ..nn.centers import GlobalBatch
from ..nn.losses import regularface_loss
from ..nn.models import normalize_pixels
from .build import TrainingParts
from .divergence import DivergenceWatch


def learning_rate(cfg: Config, iteration: int) -> float:
    """Step schedule (x lr_gamma at each milestone) after an optional linear warm-up."""
    lr = cfg.lr * cfg.lr_gamma ** sum(iteration >= m for m in cfg.milestones)
    if cfg.warmup_iters and iteration < cfg.warmup_iters:
        lr *= (iteration + 1) / cfg.warmup_iters
    return lr


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


def training_step(cfg: Config, parts: TrainingParts, watch: DivergenceWatch, iteration: int, images: torch.Tensor,
                  labels: torch.Tensor) -> StepMetrics:
    """Iteration `iteration + 1` on a batch, `labels` as the data loader gives them (on the host). A
    non-finite loss is noted on the device for the watch's next check, unless `check_finite_every_step`
    asks for a check (a read) now."""
    device, model = parts.device, parts.model
    lr = learning_rate(cfg, iteration)
    for group in parts.optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    x = normalize_pixels(images.to(device, non_blocking=True))
    if cfg.channels_last and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    # the centers work out a batch's classes from the host's labels; the training set's labels were
    # range-checked once, when it was opened
    host_labels = labels
    labels = labels.to(device, non_blocking=True)
    use_amp = cfg.amp and device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        features, logits = parts.net(x, labels)
    features = features.float()
    # the loss's centers and Eq. 7 below share one gather of all ranks' labels and features a step
    global_batch = GlobalBatch(features, host_labels)
    ce = F.cross_entropy(logits.float(), labels)
    uniform = torch.zeros((), device=device)
    if cfg.alpha > 0:
        # the other classes' centers enter as constants, Eq. 6 sharded over ranks (docs/DESIGN.md §4.6, §4.7)
        uniform = parts.centers.uniform_loss_of(global_batch, reduction=cfg.uniform_reduction,
                                                batch_size=cfg.batch_size, check_labels=False)
    regular = torch.zeros((), device=device)
    if cfg.regularface > 0:
        regular = regularface_loss(model.head.weight)
    loss = ce + cfg.alpha * uniform + cfg.regularface * regular
    watch.note_loss(iteration + 1, loss, ce, uniform, check_now=cfg.check_finite_every_step)
    parts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    parts.optimizer.step()
    # Always called: with beta = 0 it still sets a class's center on its first appearance.
    parts.centers.update_from(global_batch, cfg.beta, check_labels=False, check_finite=cfg.check_finite_every_step)
    with torch.no_grad():
        cosine = F.linear(F.normalize(features.detach()), F.normalize(model.head.weight.float()))
        accuracy = (cosine.argmax(1) == labels).float().mean()
    return StepMetrics(loss.detach(), ce.detach(), uniform.detach(), regular.detach(), accuracy)
