"""UniformFace's uniform loss (Duan et al., CVPR 2019, Eq. 6) and RegularFace's exclusive regulariser
(Zhao et al., CVPR 2019), both over all pairs of M centers in row chunks so that memory stays
O(chunk x M) however many classes there are (100,000 x 512 centers fit in well under 2 GB).

At the paper's own scale (85,742 classes) Eq. 6 costs ~2 M^2 d multiply-adds a step; three things keep
it from dominating the step (docs/DESIGN.md §4.6): under torch.distributed each rank sweeps only its share
of the rows (`shard_rows`), constant centers (`others`) get no gradient computed, and on the unit sphere the
Gram products may run on bf16 tensor cores split in two parts (`GRAM_PRECISIONS`).
"""
from __future__ import annotations

import contextlib
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..base.distributed import rank_and_world
from ..base.registry import UNIFORM_REDUCTIONS

# Elements of one (chunk x M) block of pairwise values; a few such blocks are alive at once.
CHUNK_ELEMENTS = 1 << 24


def default_chunk_size(num_rows: int) -> int:
    return max(1, min(num_rows, CHUNK_ELEMENTS // max(num_rows, 1)))


@contextlib.contextmanager
def exact_matmul(device: torch.device):
    """Full-precision float32 CUDA matmuls (no TF32) while inside: the distance expansion cancels
    |a|^2 + |b|^2 against 2 a.b, and TF32's 10-bit mantissa would leave the distances of nearby
    centers at the noise level (and Eq. 6's gradient on the sphere above 1e-4 of float64 from about
    60,000 centers: docs/DESIGN.md §4.6). Only the per-backend `fp32_precision` switch is touched (read, set,
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


# How the Gram products <p_i, p_j> of Eq. 6's distances are computed (docs/DESIGN.md §4.6):
# "exact": in the points' own precision (float32 or float64; no TF32 on CUDA);
# "split-bf16": each float32 point split into two bfloat16 parts, hi + lo, and <a, b> taken as
# <a_hi, b_hi> + <a_hi, b_lo> + <a_lo, b_hi>: three bf16 products (one matmul over 3 d columns) summed in
# float32, about 16 significant bits, enough for the unit-sphere reading (within 1e-4 of float64 up to
# 100,000 centers). On CUDA the products run on bf16 tensor cores; elsewhere they are emulated exactly
# (bf16 values multiply exactly in float32), which is how the CPU tests check the error bound.
GRAM_PRECISIONS = ("exact", "split-bf16")

_SPLIT_PRODUCTS_RUN: dict[str, bool] = {}  # device -> whether bf16 x bf16 -> float32 addmm runs there


def split_products_run(device: torch.device) -> bool:
    """Whether `torch.addmm(..., out_dtype=torch.float32)` on bfloat16 matrices runs on this CUDA device
    (asked once per device, with odd sizes, and its result checked; a device that cannot gets exact
    float32 products with a warning)."""
    key = str(device)
    if key not in _SPLIT_PRODUCTS_RUN:
        try:
            a = torch.ones(3, 24, dtype=torch.bfloat16, device=device)
            b = torch.full((5, 24), 2.0, dtype=torch.bfloat16, device=device)
            c = torch.ones(3, 5, device=device)
            product = torch.addmm(c, a, b.T, out_dtype=torch.float32, alpha=-2.0)
            works = product.dtype == torch.float32 and bool((product == -95.0).all())
            reason = "wrong result"
        except (RuntimeError, NotImplementedError, TypeError) as error:
            works, reason = False, str(error).splitlines()[0] if str(error) else type(error).__name__
        if not works:
            warnings.warn(f"uniform_loss: bf16 products with float32 output do not run on {device} ({reason}); "
                          "the Gram products are computed in exact float32 instead", RuntimeWarning)
        _SPLIT_PRODUCTS_RUN[key] = works
    return _SPLIT_PRODUCTS_RUN[key]


class PairDistances:
    """Distances (in the scaled units of `centered_and_scaled`) from row blocks of `points` to every row, by
    the expansion |a|^2 + |b|^2 - 2 a.b with the Gram products in `precision` (see GRAM_PRECISIONS)."""

    def __init__(self, points: torch.Tensor, precision: str = "exact"):
        self.points = points
        self.split = precision == "split-bf16" and points.dtype == torch.float32
        if self.split and points.device.type == "cuda" and not split_products_run(points.device):
            self.split = False
        # exact norms also for the split products: their error, 2 <lo_i, lo_j> for the dropped lo x lo
        # term, then has mean zero (norms from the same three products would shift every distance by
        # -|lo_i - lo_j|^2, a bias that piles up over the M^2 pairs)
        self.sq_norms = (points * points).sum(1)
        if not self.split:
            return
        hi = points.bfloat16()
        lo = (points - hi.float()).bfloat16()
        self.row_operand = torch.cat([hi, hi, lo], 1)
        self.column_operand = torch.cat([hi, lo, hi], 1)
        self.native = points.device.type == "cuda"
        if not self.native:  # emulation: bf16 values and their products are exact in float32
            self.row_operand, self.column_operand = self.row_operand.float(), self.column_operand.float()

    def block(self, start: int, stop: int) -> torch.Tensor:
        if not self.split:
            return block_distances(self.points, self.sq_norms, start, stop)
        norms = self.sq_norms[start:stop, None] + self.sq_norms[None, :]
        rows = self.row_operand[start:stop]
        if self.native:
            sq = torch.addmm(norms, rows, self.column_operand.T, out_dtype=torch.float32, alpha=-2.0)
        else:
            sq = torch.addmm(norms, rows, self.column_operand.T, alpha=-2.0)
        return sq.clamp_min_(0.0).sqrt_()


def shard_rows(num_rows: int, grad_rows: int, rank: int, world: int) -> list[tuple[int, int]]:
    """The row ranges of Eq. 6's sweep that rank `rank` of `world` computes: one equal share (to a row) of
    the rows that need a gradient, [0, grad_rows), and one of the others, [grad_rows, num_rows), so that
    every rank does about the same work whatever M, the world size and the batch are. One range, all rows,
    for a single process."""
    if world == 1:
        return [(0, num_rows)]

    def share(first: int, last: int) -> tuple[int, int]:
        n = last - first
        return first + n * rank // world, first + n * (rank + 1) // world

    return [share(0, grad_rows), share(grad_rows, num_rows)]


class _UniformLoss(torch.autograd.Function):
    """sum over ordered pairs j1 != j2 of 1 / (|c_j1 - c_j2| + 1), divided by `divisor` (M (M - 1)
    for Eq. 6 as printed, M - 1 for the per-center reduction), over the rows of `centers` and `others`
    together; only `centers` get a gradient.

    One sweep over row blocks of the pairwise distances computes the loss and, for the blocks that hold
    rows of `centers`, the gradient too (rows of `centers`, by the symmetry of the pairs): no (M, M) matrix
    is ever kept, so memory is O(chunk x M) rather than autograd's O(M^2), and the distances are computed
    once.

    Sharded (world > 1): this rank sweeps only its `shard_rows`; the loss's partial sums are added over the
    ranks (one all_reduce) so every rank returns the whole loss, and the gradient returned is world x the
    gradient of this rank's rows (zero elsewhere): summed over ranks, by the feature gather's backward or
    by DDP's all-reduce, it is world x the whole gradient, as if every rank computed everything, so DDP's
    mean over ranks leaves the single-process gradient."""

    @staticmethod
    def forward(ctx, centers: torch.Tensor, others: torch.Tensor | None, chunk_size: int, divisor: float,
                precision: str, rank: int, world: int) -> torch.Tensor:
        needs_grad = ctx.needs_input_grad[0]
        dtype = _compute_dtype(centers)
        with torch.autocast(centers.device.type, enabled=False), exact_matmul(centers.device):
            rows = centers.to(dtype) if others is None else torch.cat([centers.to(dtype), others.to(dtype)])
            points, scale = centered_and_scaled(rows)
            distances = PairDistances(points, precision)
            m, grad_rows = len(points), len(centers)
            floor = _gradient_floor(dtype)
            total = points.new_zeros((), dtype=torch.float64)  # sums up to M^2 terms
            grad = points.new_zeros((grad_rows, points.shape[1])) if needs_grad else None
            for first, last in shard_rows(m, grad_rows, rank, world):
                for start in range(first, last, chunk_size):
                    stop = min(start + chunk_size, last)
                    unit_dist = distances.block(start, stop)
                    inverse = (unit_dist * scale).add_(1.0).reciprocal_()  # 1 / (D + 1), D = scale * unit_dist
                    inverse.diagonal(offset=start).zero_()
                    total += inverse.sum()
                    if needs_grad and start < grad_rows:
                        # d/dc_i of 1/(D_ij + 1) = -(c_i - c_j) / (D_ij (D_ij + 1)^2), and both orders (i, j)
                        # and (j, i) contribute it, hence the 2; in scaled units (c_i - c_j) / D_ij is
                        # (p_i - p_j) / unit_dist_ij.
                        weight = inverse.square_().div_(unit_dist).mul_(-2.0)
                        weight.masked_fill_(unit_dist < floor, 0.0)
                        weight.diagonal(offset=start).zero_()
                        # the whole block's product (a sliced one can round otherwise): the gradient rows
                        # equal, to the bit, those of the same call without `others`
                        block_grad = points[start:stop] * weight.sum(1, keepdim=True) - weight @ points
                        kept = min(stop, grad_rows) - start
                        grad[start:start + kept] = block_grad[:kept]
                    del unit_dist, inverse
            if world > 1:
                partial = total.reshape(1)
                dist.all_reduce(partial)
                total = partial[0]
            if needs_grad:
                grad.div_(divisor)
                ctx.save_for_backward(grad.mul_(world) if world > 1 else grad)
            ctx.input_dtype = centers.dtype
            return (total / divisor).to(dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.input_dtype), None, None, None, None, None, None


def uniform_loss(centers: torch.Tensor, chunk_size: int | None = None, reduction: str = "pairs",
                 batch_size: int = 1, *, others: torch.Tensor | None = None, precision: str = "exact",
                 sharded: bool = False) -> torch.Tensor:
    """UniformFace Eq. 6 without its weight lambda (the caller multiplies), over the (M, d) `centers`
    (docs/DESIGN.md §4.1, §4.4, §4.6):

    - reduction "pairs" (Eq. 6 as printed): 1 / (M (M - 1)) * sum over ordered pairs j1 != j2 of
      1 / (|c_j1 - c_j2|_2 + 1), the mean potential of a pair. The force on one center is then a mean
      over its M - 1 partners divided once more by M: it fades like 1/M (2e-4 at CASIA's 10,572 classes).
    - reduction "center": the sum over centers j1 of the mean over j2 != j1 of 1 / (|c_j1 - c_j2| + 1),
      divided by `batch_size`: every center is a unit charge in the mean field of the others, so the force
      on it does not depend on M ("like charges on the surface of the hypersphere", the paper's abstract),
      and it is shared out per image of the batch, as the cross-entropy's mean over the batch is, so that
      the weight lambda compares the two on the same footing whatever M and the batch are. It is
      M / batch_size times the printed value.

    `others`: (K, d) further centers that enter Eq. 6 as constants (M counts them; no gradient reaches
    them, and none is computed for their rows, which halves the work when K is most of M). `precision`:
    how the Gram products of the distances are computed (GRAM_PRECISIONS; float64 input is always exact).
    `sharded` (under torch.distributed; off by default, so that a caller's own rank-local or one-rank call
    stays a plain sweep): every rank must pass the same centers; each sweeps its share of the rows
    (`shard_rows`), every rank gets the whole loss, and the gradient follows the convention of
    `_UniformLoss` (summed over the ranks it is world x the gradient).

    Differentiable with a finite gradient (zero between coinciding centers); `chunk_size` rows per block
    (default: about 16M pairwise values per block). M < 2 gives 0. The result is float32 for
    half/bfloat16 input (and computed outside autocast)."""
    if centers.dim() != 2:
        raise ValueError(f"uniform_loss: centers must be (M, d), got shape {tuple(centers.shape)}")
    if others is not None and (others.dim() != 2 or others.shape[1] != centers.shape[1]):
        raise ValueError(f"uniform_loss: others must be (K, {centers.shape[1]}) like the centers, got shape "
                         f"{tuple(others.shape)}")
    if reduction not in UNIFORM_REDUCTIONS:
        raise ValueError(f"uniform_loss: reduction must be one of {UNIFORM_REDUCTIONS}, got {reduction!r}")
    if precision not in GRAM_PRECISIONS:
        raise ValueError(f"uniform_loss: precision must be one of {GRAM_PRECISIONS}, got {precision!r}")
    if batch_size < 1:
        raise ValueError(f"uniform_loss: batch_size must be >= 1, got {batch_size}")
    m = len(centers) + (0 if others is None else len(others))
    if m < 2:
        return centers.new_zeros((), dtype=_compute_dtype(centers))
    chunk = default_chunk_size(m) if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"uniform_loss: chunk_size must be >= 1, got {chunk_size}")
    divisor = float(m - 1) * batch_size if reduction == "center" else float(m * (m - 1))
    rank, world = rank_and_world() if sharded else (0, 1)
    others = None if others is None else others.detach()
    return _UniformLoss.apply(centers, others, chunk, divisor, precision, rank, world)


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
