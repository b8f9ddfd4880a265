"""Margin heads: class weights + labels -> logits for cross-entropy.

- `ASoftmax`: SphereFace's A-Softmax with the lambda annealing of the official
  `margin_inner_product_layer.cpp` (m = 4 is its QUADRUPLE type), back-propagating by default as that
  layer's hand-written Backward_cpu does (`gradient="official"`), or by autograd of the forward.
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
from ..base.registry import ASOFTMAX_GRADIENTS, HEAD_CLASSES


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


def _asoftmax_logits(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, lamb: torch.Tensor,
                     m: int) -> torch.Tensor:
    """Target logit (lambda |x| cos theta + |x| psi(theta)) / (1 + lambda), every other |x| cos theta."""
    cos = F.linear(F.normalize(x, dim=1), F.normalize(weight, dim=1)).clamp(-1.0, 1.0)
    norm = x.norm(dim=1, keepdim=True)
    cos_target = cos.gather(1, labels)
    with torch.no_grad():
        # acos only decides the branch; it never enters the gradient.
        k = torch.floor(m * torch.acos(cos_target) / math.pi)
    sign = 1.0 - 2.0 * torch.remainder(k, 2)  # (-1)^k
    psi = sign * chebyshev_cos(cos_target, m) - 2.0 * k
    target = (lamb * cos_target + psi) / (1.0 + lamb)
    return norm * cos.scatter(1, labels, target)


def _margin_coefficients(c: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(coeff_w, coeff_x |x|) of Backward_cpu's target branch for m = 2, 3, 4 (DOUBLE, TRIPLE, QUADRUPLE):
    autograd of the margin part |x| psi(c) is coeff_w w + coeff_x x. Polynomials in c with the signs as
    Forward_cpu defines them (sign(0) = 0), so no acos and nothing infinite at c = +-1."""
    s0 = torch.sign(c)
    if m == 2:
        return 4 * s0 * c, -(2 * s0 * c**2 + 1)
    if m == 3:
        s1 = torch.sign(c.abs() - 0.5)
        s2 = s0 * (1 + s1) - 2
        return s1 * (12 * c**2 - 3), -(8 * s1 * c**3 - s2)
    s3 = s0 * torch.sign(2 * c**2 - 1)
    s4 = 2 * s0 + s3 - 3
    return s3 * (32 * c**3 - 16 * c), -(s3 * (24 * c**4 - 8 * c**2 - 1) - s4)


class _OfficialASoftmax(torch.autograd.Function):
    """The A-Softmax forward with the official layer's backward (`margin_inner_product_layer.cpp`,
    Backward_cpu), which is not the derivative of the forward (docs/DESIGN.md §3.3 derives the coefficients):

    - class weights: dL/dW = top_diff^T x, with no margin factor and no Jacobian of the row normalisation;
    - features: each logit j sends back top_diff_j w_j, except the target's margin part for m >= 2, whose
      autograd gradient coeff_w w_y + coeff_x x is divided by its length n = sqrt(coeff_w^2 + coeff_x^2):
      d target / dx = [lambda w_y + (coeff_w w_y + coeff_x x) / n] / (1 + lambda).
      m = 1 (SINGLE) is a plain inner product both ways. Without the division by n this is autograd's.
    """

    @staticmethod
    def forward(ctx, x, weight, labels, lamb, m):
        unit = F.normalize(weight, dim=1)
        ctx.m = m
        ctx.save_for_backward(x, unit, labels, lamb)
        return _asoftmax_logits(x, weight, labels, lamb, m)

    @staticmethod
    def backward(ctx, top_diff):
        x, unit, labels, lamb = ctx.saved_tensors
        with torch.autocast(top_diff.device.type, enabled=False):
            top_diff = top_diff.to(x.dtype)
            grad_weight = top_diff.t() @ x
            grad_x = top_diff @ unit
            if ctx.m > 1:
                w_y = unit[labels[:, 0]]
                norm = x.norm(dim=1, keepdim=True).clamp_min(1e-12)
                c = (x / norm * w_y).sum(1, keepdim=True).clamp(-1.0, 1.0)
                coeff_w, coeff_x = _margin_coefficients(c, ctx.m)
                coeff_x = coeff_x / norm
                n = torch.hypot(coeff_w, coeff_x).clamp_min(torch.finfo(x.dtype).tiny)
                # grad_x already holds top_diff_y w_y; the target's is [lambda w_y + margin / n] / (1 + lambda).
                scale = top_diff.gather(1, labels) / (1.0 + lamb)
                grad_x = grad_x + scale * ((coeff_w / n - 1.0) * w_y + coeff_x / n * x)
        return grad_x, grad_weight.to(unit.dtype), None, None, None


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

    `gradient="official"` (default) back-propagates as the layer's Backward_cpu (`_OfficialASoftmax`;
    m = 1..4, its SINGLE..QUADRUPLE types); `gradient="autograd"` uses autograd of this forward.
    """

    def __init__(self, in_features: int, num_classes: int, m: int = 4, base: float = 1000, gamma: float = 0.12,
                 power: float = 1, lambda_min: float = 5, gradient: str = "official"):
        super().__init__(in_features, num_classes)
        if int(m) != m or m < 1:
            raise ValueError(f"A-Softmax margin m must be a positive integer, got {m}")
        if gradient not in ASOFTMAX_GRADIENTS:
            raise ValueError(f"A-Softmax gradient must be one of {', '.join(ASOFTMAX_GRADIENTS)}, got {gradient!r}")
        if gradient == "official" and m > 4:
            raise ValueError(f"the official A-Softmax backward exists for m = 1..4 only, got m = {m}; "
                             "use gradient='autograd'")
        self.m, self.base, self.gamma, self.power, self.lambda_min = int(m), float(base), float(gamma), \
            float(power), float(lambda_min)
        self.gradient = gradient
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
            x, weight = _fp32(x), _fp32(self.weight)
            lamb = self._lambda_tensor().to(x.dtype)
            if self.gradient == "official":
                return _OfficialASoftmax.apply(x, weight, labels, lamb, self.m)
            return _asoftmax_logits(x, weight, labels, lamb, self.m)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, m={self.m}, base={self.base:g}, gamma={self.gamma:g}, "
                f"power={self.power:g}, lambda_min={self.lambda_min:g}, gradient={self.gradient}")


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


# name -> class, from the one table of head names (registry.HEAD_CLASSES: name -> class name)
HEADS = {name: globals()[class_name] for name, class_name in HEAD_CLASSES.items()}


def build_head(name: str, in_features: int, num_classes: int, **kwargs) -> nn.Module:
    """`sphereface` -> ASoftmax, `cosface` -> CosFace, `arcface` -> ArcFace; kwargs go to the class."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; valid names: {', '.join(HEADS)}")
    try:
        return HEADS[name](in_features, num_classes, **kwargs)
    except TypeError as error:
        raise TypeError(f"head {name!r}: {error}") from None
