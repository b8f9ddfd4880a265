"""How a run stops: TrainingError, one line naming the file, key or iteration and the fix (the scripts
print it as `train.py: error: ...` and exit 1), and divergence: a run whose loss, weights or centers stop
being finite, or whose final weights give non-finite features, stops at once (TrainingDiverged), naming
the iteration where it happened and a checkpoint to continue from that exists and holds finite weights. A
checkpoint is never replaced by a state that is not finite."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..nn.models import normalize_pixels
from .checkpoint import Checkpoints


class TrainingError(RuntimeError):
    """A run that cannot start or go on, for a reason the (one-line) message names, with the fix."""


class TrainingDiverged(TrainingError):
    """The loss, weights, centers or features stopped being finite; the message names the iteration and the
    checkpoint to continue from."""


def non_finite_part(model: nn.Module, centers: nn.Module, optimizer: torch.optim.Optimizer,
                    device: torch.device) -> str | None:
    """What of the training state is not finite (named), or None; one read of the device for all of it."""
    names = {parameter: name for name, parameter in model.named_parameters()}  # the optimizer's state's keys
    parts = [("the weights", model.state_dict()), ("the class centers", centers.state_dict()),
             ("the optimizer's momentum buffers", {f"{names.get(p, '?')}.{k}": v for p, st in optimizer.state.items()
                                                   for k, v in st.items()})]
    named = [(what, name, value) for what, tensors in parts for name, value in tensors.items()
             if torch.is_tensor(value) and value.is_floating_point()]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(value).all().to(device) for _, _, value in named]).tolist()
    for (what, name, _), ok in zip(named, finite):
        if not ok:
            return f"{what} ({name})"
    return None


def features_finite(backbone: nn.Module, images: torch.Tensor, device: torch.device) -> bool:
    """Whether `backbone` gives finite features for `images` (uint8, as the loader gives them) in eval mode,
    as test.py computes them: weights can be finite yet so large (a learning rate far too high) that the
    features overflow, and no test could use them. One read of the device."""
    training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            features = backbone(normalize_pixels(images.to(device)))
    finally:
        backbone.train(training)
    return bool(torch.isfinite(features).all())


class DivergenceWatch:
    """Notes the first step whose loss was not finite on the device, without reading it back (the step
    must not wait for the device), and raises TrainingDiverged at the next check: at each log point and
    before each checkpoint, unless `check_finite_every_step` checks each step. `writes`: this process
    writes the run folder's files (the main rank)."""

    def __init__(self, checkpoints: Checkpoints, lr: float, device: torch.device, writes: bool):
        self.checkpoints, self.lr, self.writes = checkpoints, lr, writes
        # iteration, cross-entropy and uniform loss of the first step whose loss was not finite (iteration
        # -1: none yet), kept on the device and read at the next check
        self.noted = torch.full((3,), -1.0, dtype=torch.float64, device=device)

    def note_loss(self, iteration: int, loss: torch.Tensor, ce: torch.Tensor, uniform: torch.Tensor,
                  check_now: bool) -> None:
        """After iteration `iteration`'s forward pass: its loss noted when not finite, or with `check_now`
        TrainingDiverged at once (a read of the device)."""
        if check_now:
            if not bool(torch.isfinite(loss)):
                raise self.diverged(f"loss is not finite at iteration {iteration} (cross-entropy {ce.item():.4g}, "
                                    f"uniform {uniform.item():.4g})", poisoned=iteration - 1)
            return
        with torch.no_grad():
            noted = torch.stack([torch.full((), float(iteration), dtype=torch.float64, device=self.noted.device),
                                 ce.double(), uniform.double()])
            first = ~torch.isfinite(loss) & (self.noted[0] < 0)
            self.noted = torch.where(first, noted, self.noted)

    def raise_if_noted(self, iteration: int, record: list[float] | None = None) -> None:
        """TrainingDiverged when a step's loss was not finite since the last check, found at `iteration`.
        `record`: the values of `noted`, already read with others (else they are read here). A divergence
        is found up to log_every - 1 steps late, and named by the step where it happened."""
        noted_at, ce, uniform = record if record is not None else self.noted.tolist()
        if noted_at >= 0:
            late = "" if noted_at == iteration else f"; found at iteration {iteration}, the next check"
            raise self.diverged(f"loss is not finite at iteration {int(noted_at)} (cross-entropy {ce:.4g}, "
                                f"uniform {uniform:.4g}{late})", poisoned=int(noted_at) - 1)

    def diverged(self, what: str, poisoned: int | None = None) -> TrainingDiverged:
        """The exception for a run that stopped being finite, naming a checkpoint to continue from that
        exists and holds finite weights (`Checkpoints.last_good`). `poisoned`: the iteration of a state
        whose forward pass gave a non-finite loss."""
        good = self.checkpoints.last_good(poisoned, self.writes)
        path, run = self.checkpoints.path, self.checkpoints.resume_args
        if good is not None:
            advice = (f"The last good checkpoint is {path} (iteration {good}, finite weights): continue from it "
                      f"with a smaller learning rate, e.g. train.py {run} --resume --set lr={self.lr / 10:g} (or "
                      "change beta / grad_clip the same way)")
        elif poisoned == 0:
            advice = ("The initial weights already give a non-finite loss, which no learning rate changes: check the "
                      "loss settings (loss.*, alpha, regularface) and the training images")
        else:
            advice = (f"No checkpoint before iteration {poisoned} is kept: start again with a smaller learning rate "
                      f"(train.py with another --run_name and --set lr={self.lr / 10:g})")
        return TrainingDiverged(f"{what}; stopped, no weights file written. {advice}")
