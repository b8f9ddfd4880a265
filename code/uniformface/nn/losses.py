"""UniformFace's uniform loss (Duan et al., CVPR 2019, Eq. 6) and RegularFace's exclusive regulariser
(Zhao et al., CVPR 2019), both over all pairs of M centers in row chunks so that memory stays
O(chunk x M) however many classes there are (100,000 x 512 centers fit in well under 2 GB).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..base.registry import UNIFORM_REDUCTIONS

# Elements of one (chunk x M) block of pairwise values; a few such blocks are alive at once.
CHUNK_ELEMENTS = 1 << 24


def default_chunk_size(num_rows: int) -> int:
    return max(1, min(num_rows, CHUNK_ELEMENTS // max(num_rows, 1)))


@contextlib.contextmanager
def exact_matmul(device: torch.device):
    """Full-precision float32 CUDA matmuls (no TF32) while inside: the distance expansion cancels
    |a|^2 + |b|^2 against 2 a.b, and TF32's 10-bit mantissa would leave the distances of nearby
    centers at the noise level. Only the per-backend `fp32_precision` switch is touched (read, set,
    restored): the global legacy getters raise once legacy and new settings are mixed."""
    matmul = torch.backends.cuda.matmul
    if device.type != "cuda":
        yield
        return
    name = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    exact = "ieee" if name == "fp32_precision" else False
    previous = getattr(matmul, name)
    if previous == exact:
        yield
        return
    setattr(matmul, name, exact)
    try:
        yield
    finally:
        setattr(matmul, name, previous)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def centered_and_scaled(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(points - mean) / scale and scale, the largest centered norm (so the result lies in the unit ball);
    scale is a 0-d tensor on the points' device.

    Distances are translation invariant, and the expansion |a|^2 + |b|^2 - 2 a.b loses precision in
    proportion to the norms, so centering first keeps the cancellation small; the scaling keeps the
    squares far from overflow (and underflow) however far the points drift. An uncentered, unscaled
    expansion gives negative squared distances, hence NaN, once centers grow large.

    The magnitudes stay on the device and the special cases are chosen there (torch.where), not by
    reading them back: a read would make every training step wait for the GPU. Dividing by exactly 1
    leaves values unchanged, so each case gives what the branches it replaces gave."""
    if not points.numel():
        return points - points.mean(0, keepdim=True), points.new_ones(())
    magnitude = points.abs().max()
    # all zero, or NaN/inf that must show: not rescaled (scale 1), only centered
    usable = torch.isfinite(magnitude) & (magnitude != 0)
    magnitude = torch.where(usable, magnitude, 1.0)
    centered = points / magnitude  # first, so that the mean of huge values cannot overflow either
    centered -= centered.mean(0, keepdim=True)
    spread = centered.norm(dim=1).max()
    spread = torch.where(usable & (spread != 0), spread, 1.0)  # spread 0: all points coincide
    return centered.div_(spread), magnitude * spread


def block_distances(unit_points: torch.Tensor, sq_norms: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Distances (in the scaled units) from rows start:stop to every row, by the expansion."""
    block = unit_points[start:stop]
    sq = torch.addmm(sq_norms[start:stop, None] + sq_norms[None, :], block, unit_points.T, alpha=-2.0)
    return sq.clamp_min_(0.0).sqrt_()


def _gradient_floor(dtype: torch.dtype) -> float:
    """Scaled distances below this are rounding noise of the expansion (about sqrt(eps) relative to
    the largest norm): such pairs count as coinciding and push each other with zero gradient (the
    subgradient at a kink) instead of along a noise direction with weight 1/distance."""
    return 4.0 * torch.finfo(dtype).eps ** 0.5


class _UniformLoss(torch.autograd.Function):
    """sum over ordered pairs j1 != j2 of 1 / (|c_j1 - c_j2| + 1), divided by `pairs_per_unit` (M (M - 1)
    for Eq. 6 as printed, M - 1 for the per-center reduction).

    One sweep over row blocks of the pairwise distances computes the loss and, when the centers need
    it, the gradient too (the gradient is (M, d), like the centers): no (M, M) matrix is ever kept,
    so memory is O(chunk x M) rather than autograd's O(M^2), and the distances are computed once."""

    @staticmethod
    def forward(ctx, centers: torch.Tensor, chunk_size: int, divisor: float) -> torch.Tensor:
        needs_grad = ctx.needs_input_grad[0]
        dtype = _compute_dtype(centers)
        with torch.autocast(centers.device.type, enabled=False), exact_matmul(centers.device):
            points, scale = centered_and_scaled(centers.to(dtype))
            sq_norms = (points * points).sum(1)
            m = len(points)
            floor = _gradient_floor(dtype)
            total = points.new_zeros((), dtype=torch.float64)  # sums up to M^2 terms
            grad = torch.empty_like(points) if needs_grad else None
            for start in range(0, m, chunk_size):
                stop = min(start + chunk_size, m)
                unit_dist = block_distances(points, sq_norms, start, stop)
                inverse = (unit_dist * scale).add_(1.0).reciprocal_()  # 1 / (D + 1), D = scale * unit_dist
                inverse.diagonal(offset=start).zero_()
                total += inverse.sum()
                if needs_grad:
                    # d/dc_i of 1/(D_ij + 1) = -(c_i - c_j) / (D_ij (D_ij + 1)^2), and both orders (i, j)
                    # and (j, i) contribute it, hence the 2; in scaled units (c_i - c_j) / D_ij is
                    # (p_i - p_j) / unit_dist_ij.
                    weight = inverse.square_().div_(unit_dist).mul_(-2.0)
                    weight.masked_fill_(unit_dist < floor, 0.0)
                    weight.diagonal(offset=start).zero_()
                    grad[start:stop] = points[start:stop] * weight.sum(1, keepdim=True) - weight @ points
                del unit_dist, inverse
            if needs_grad:
                ctx.save_for_backward(grad.div_(divisor))
            ctx.input_dtype = centers.dtype
            return (total / divisor).to(dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.input_dtype), None, None


def uniform_loss(centers: torch.Tensor, chunk_size: int | None = None, reduction: str = "pairs",
                 batch_size: int = 1) -> torch.Tensor:
    """UniformFace Eq. 6 without its weight lambda (the caller multiplies), over the (M, d) `centers`
    (docs/DESIGN.md §4.1, §4.4):

    - reduction "pairs" (Eq. 6 as printed): 1 / (M (M - 1)) * sum over ordered pairs j1 != j2 of
      1 / (|c_j1 - c_j2|_2 + 1), the mean potential of a pair. The force on one center is then a mean
      over its M - 1 partners divided once more by M: it fades like 1/M (2e-4 at CASIA's 10,572 classes).
    - reduction "center": the sum over centers j1 of the mean over j2 != j1 of 1 / (|c_j1 - c_j2| + 1),
      divided by `batch_size`: every center is a unit charge in the mean field of the others, so the force
      on it does not depend on M ("like charges on the surface of the hypersphere", the paper's abstract),
      and it is shared out per image of the batch, as the cross-entropy's mean over the batch is, so that
      the weight lambda compares the two on the same footing whatever M and the batch are. It is
      M / batch_size times the printed value.

    Differentiable with a finite gradient (zero between coinciding centers); `chunk_size` rows per block
    (default: about 16M pairwise values per block). M < 2 gives 0. The result is float32 for
    half/bfloat16 input (and computed outside autocast)."""
    if centers.dim() != 2:
        raise ValueError(f"uniform_loss: centers must be (M, d), got shape {tuple(centers.shape)}")
    if reduction not in UNIFORM_REDUCTIONS:
        raise ValueError(f"uniform_loss: reduction must be one of {UNIFORM_REDUCTIONS}, got {reduction!r}")
    if batch_size < 1:
        raise ValueError(f"uniform_loss: batch_size must be >= 1, got {batch_size}")
    m = len(centers)
    if m < 2:
        return centers.new_zeros((), dtype=_compute_dtype(centers))
    chunk = default_chunk_size(m) if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"uniform_loss: chunk_size must be >= 1, got {chunk_size}")
    divisor = float(m - 1) * batch_size if reduction == "center" else float(m * (m - 1))
    return _UniformLoss.apply(centers, chunk, divisor)


def regularface_loss(weight: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """RegularFace's exclusive regulariser (Zhao et al. 2019, Eq. 5): (1/C) sum_i max_{j != i} cos(W_i, W_j).

    The max's argument is found blockwise without a graph; the loss is then the mean of the chosen
    cosines, whose gradient is the max's (sub)gradient, with O(C d) memory."""
    if weight.dim() != 2:
        raise ValueError(f"regularface_loss: weight must be (C, d), got shape {tuple(weight.shape)}")
    c = len(weight)
    if c < 2:
        return weight.new_zeros((), dtype=_compute_dtype(weight))
    chunk = default_chunk_size(c) if chunk_size is None else int(chunk_size)
    with torch.autocast(weight.device.type, enabled=False):
        unit = F.normalize(weight.to(_compute_dtype(weight)), dim=1)
        nearest = torch.empty(c, dtype=torch.long, device=weight.device)
        with torch.no_grad():
            for start in range(0, c, chunk):
                stop = min(start + chunk, c)
                cos = unit[start:stop] @ unit.T
                cos.diagonal(offset=start).fill_(-float("inf"))
                nearest[start:stop] = cos.argmax(1)
        return (unit * unit[nearest]).sum(1).mean()
