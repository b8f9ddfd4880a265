"""Margin heads: class weights + labels -> logits for cross-entropy.

- `ASoftmax`: SphereFace's A-Softmax with the lambda annealing of the official
  `margin_inner_product_layer.cpp` (m = 4 is its QUADRUPLE type).
- `CosFace` (Wang et al. 2018): s * (cos theta - m [j = y]).
- `ArcFace` (Deng et al. 2019): s * cos(theta + m), with the usual fallback where theta + m > pi.

Weight init for all three: Caffe's "xavier" filler, U(-sqrt(3/in), +sqrt(3/in)), the filler the official
prototxt gives the A-Softmax layer (fc6). Rows then have norm ~1, so the (unnormalised) parameter starts
on the unit sphere where the normalisation's Jacobian neither amplifies nor damps the gradient.

The margin math always runs in float32 (at least): under bf16 autocast a cosine carries ~3 significant
digits, too few for cos(4 theta) near theta = 0 and for the (1 + lambda) blend.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .models import caffe_xavier_


def _check_inputs(x: torch.Tensor, labels: torch.Tensor, in_features: int) -> None:
    if x.dim() != 2 or x.shape[1] != in_features:
        raise ValueError(f"features must be (B, {in_features}), got {tuple(x.shape)}")
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must be ({x.shape[0]},), got {tuple(labels.shape)}")


def _fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def chebyshev_cos(cos: torch.Tensor, m: int) -> torch.Tensor:
    """cos(m theta) as the Chebyshev polynomial T_m(cos theta): no acos in the gradient path, so the
    gradient stays finite at cos theta = +-1."""
    previous, current = torch.ones_like(cos), cos
    if m == 0:
        return previous
    for _ in range(m - 1):
        previous, current = current, 2 * cos * current - previous
    return current


class _NormalizedLinear(nn.Module):
    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        if in_features < 1 or num_classes < 1:
            raise ValueError(f"in_features and num_classes must be positive, got {in_features}, {num_classes}")
        self.in_features, self.num_classes = in_features, num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        caffe_xavier_(self.weight)

    def _cosine(self, x: torch.Tensor) -> torch.Tensor:
        """cos between each feature and each (unit-normalised) class weight, clamped to [-1, 1]."""
        weight = F.normalize(_fp32(self.weight), dim=1)
        return F.linear(F.normalize(x, dim=1), weight).clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"


class ASoftmax(_NormalizedLinear):
    """A-Softmax (SphereFace Eq. 7 with the annealing of the official Caffe layer).

    cos theta = x.w / |x| with w renormalised to unit length; k = floor(m theta / pi);
    psi = (-1)^k cos(m theta) - 2k; target logit (lambda |x| cos theta + |x| psi) / (1 + lambda),
    every other logit |x| cos theta. lambda = max(lambda_min, base (1 + gamma iter)^(-power)).
    In training mode each forward first adds 1 to `iteration` (as `iter_ += 1` in the Caffe layer), so
    the first step uses iteration 1 and lambda reaches lambda_min = 5 at iteration 1659.

    Like the Caffe layer, a training forward also rescales the stored weight rows to unit length in
    place, so SGD and weight decay always act on unit-norm rows (otherwise the rows' norm drifts and
    with it the effective learning rate of their direction). Eval mode leaves the parameters alone.
    The gradient is autograd's of this forward (the Caffe backward is hand-written; SPEC section 4).
    """

    def __init__(self, in_features: int, num_classes: int, m: int = 4, base: float = 1000, gamma: float = 0.12,
                 power: float = 1, lambda_min: float = 5):
        super().__init__(in_features, num_classes)
        if int(m) != m or m < 1:
            raise ValueError(f"A-Softmax margin m must be a positive integer, got {m}")
        self.m, self.base, self.gamma, self.power, self.lambda_min = int(m), float(base), float(gamma), \
            float(power), float(lambda_min)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def lambda_at(self, iteration: int) -> float:
        return max(self.lambda_min, self.base * (1.0 + self.gamma * iteration) ** (-self.power))

    def _lambda_tensor(self) -> torch.Tensor:
        # On the buffer's device: reading the iteration back to the host would sync CUDA every step.
        schedule = self.base * (1.0 + self.gamma * self.iteration.double()) ** (-self.power)
        return schedule.clamp_min(self.lambda_min)

    @property
    def lamb(self) -> float:
        """The lambda the last (or, before any training step, the next eval) forward used."""
        return self.lambda_at(int(self.iteration))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_inputs(x, labels, self.in_features)
        labels = labels.view(-1, 1).long()
        with torch.autocast(x.device.type, enabled=False):
            if self.training:
                with torch.no_grad():
                    self.iteration += 1
                    self.weight.copy_(F.normalize(self.weight, dim=1))
            x = _fp32(x)
            cos = self._cosine(x)
            norm = x.norm(dim=1, keepdim=True)
            cos_target = cos.gather(1, labels)
            lamb = self._lambda_tensor().to(cos.dtype)
            with torch.no_grad():
                # acos only decides the branch; it never enters the gradient.
                k = torch.floor(self.m * torch.acos(cos_target) / math.pi)
            sign = 1.0 - 2.0 * torch.remainder(k, 2)  # (-1)^k
            psi = sign * chebyshev_cos(cos_target, self.m) - 2.0 * k
            target = (lamb * cos_target + psi) / (1.0 + lamb)
            return norm * cos.scatter(1, labels, target)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, m={self.m}, base={self.base:g}, gamma={self.gamma:g}, "
                f"power={self.power:g}, lambda_min={self.lambda_min:g}")


class CosFace(_NormalizedLinear):
    """Large-margin cosine: logits s (cos theta_j - m [j = y])."""

    def __init__(self, in_features: int, num_classes: int, s: float = 64.0, m: float = 0.35):
        super().__init__(in_features, num_classes)
        self.s, self.m = float(s), float(m)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_inputs(x, labels, self.in_features)
        with torch.autocast(x.device.type, enabled=False):
            cos = self._cosine(_fp32(x))
            labels = labels.view(-1, 1).long()
            target = cos.gather(1, labels) - self.m
            return self.s * cos.scatter(1, labels, target)


class ArcFace(_NormalizedLinear):
    """Additive angular margin: target logit s cos(theta + m) while theta + m < pi (cos theta >
    cos(pi - m)); beyond, where cos(theta + m) would rise again, s (cos theta - m sin(m)) (insightface's
    fallback, keeping the target logit decreasing in theta)."""

    def __init__(self, in_features: int, num_classes: int, s: float = 64.0, m: float = 0.5):
        super().__init__(in_features, num_classes)
        self.s, self.m = float(s), float(m)
        self.threshold = math.cos(math.pi - self.m)
        self.fallback_offset = math.sin(math.pi - self.m) * self.m

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_inputs(x, labels, self.in_features)
        with torch.autocast(x.device.type, enabled=False):
            cos = self._cosine(_fp32(x))
            labels = labels.view(-1, 1).long()
            cos_target = cos.gather(1, labels)
            # sin = sqrt(1 - cos^2) has an infinite slope at cos = +-1; the clamp makes it zero there,
            # so the unused where-branch cannot send 0 * inf = NaN back.
            sin_target = torch.sqrt((1.0 - cos_target * cos_target).clamp_min(1e-12))
            shifted = cos_target * math.cos(self.m) - sin_target * math.sin(self.m)
            target = torch.where(cos_target > self.threshold, shifted, cos_target - self.fallback_offset)
            return self.s * cos.scatter(1, labels, target)


HEADS = {"sphereface": ASoftmax, "cosface": CosFace, "arcface": ArcFace}


def build_head(name: str, in_features: int, num_classes: int, **kwargs) -> nn.Module:
    """`sphereface` -> ASoftmax, `cosface` -> CosFace, `arcface` -> ArcFace; kwargs go to the class."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; valid names: {', '.join(HEADS)}")
    try:
        return HEADS[name](in_features, num_classes, **kwargs)
    except TypeError as error:
        raise TypeError(f"head {name!r}: {error}") from None
