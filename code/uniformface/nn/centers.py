"""Class centers for the uniform loss (UniformFace, Duan et al., CVPR 2019, Eq. 6-7).

`ClassCenters` is the paper as this project reads it (docs/DESIGN.md §4.2-§4.5): centers live in feature
space (like center loss) and move by Eq. 7 after each optimizer step,
    delta_j = sum_i [y_i = j] (c_j - x_i) / (1 + n_j),   c_j <- c_j - rate * delta_j.
The loss sees, for the classes in the batch, c~_j = c_j - delta_j(x) = (c_j + sum_{i in j} x_i) / (1 + n_j),
differentiable in the features x; the other initialised centers are constants.

Two readings of "feature space" (config key `normalize_centers`):
- sphere (True, the default): x above is the L2-normalised feature x / |x|, and every center is projected
  onto the unit sphere before Eq. 6, so distances lie in [0, 2] and the loss's gradient on a feature is
  tangential: it turns the classes' directions apart ("like charges on the surface of the hypersphere",
  the paper's abstract), which is what face verification's cosine score sees.
- raw (False): raw features and raw centers. With A-Softmax's unnormalised features (|x| ~ 10) the
  gradient points mostly along x itself (it asks for longer features) and is ~1e-4 of the cross-entropy's.

`WeightCenters` is the earlier port's variant, kept for comparison: the head's class weights are the
centers (the gradient of the uniform loss flows into them) and Eq. 7 drags them toward the features.

Under torch.distributed (initialised, world size > 1) "the batch" is the global batch: every rank
gathers all ranks' features and labels, so all ranks build the same centers, get the same loss and make
the same update; each rank sweeps only its share of Eq. 6's rows (`losses.uniform_loss`). The training
step gathers the batch once (`GlobalBatch`) and hands the same gathered batch to the loss
(`loss_centers_of` or `uniform_loss_of`) and to Eq. 7 (`update_from`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..base.distributed import gather_equal_rows, host_group, rank_and_world
from .losses import block_distances, centered_and_scaled, default_chunk_size, exact_matmul, uniform_loss

SCOPES = ("all", "batch")


def _distributed() -> bool:
    return rank_and_world()[1] > 1


def host_labels(labels: torch.Tensor) -> torch.Tensor:
    """The labels on the host. The training loop passes the data loader's own CPU tensor, used as it is;
    labels on a GPU are copied back, which waits for everything queued on it."""
    return labels if labels.device.type == "cpu" else labels.cpu()


def gather_labels(labels: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """All ranks' labels concatenated in rank order, on the host, and each rank's count; the local labels
    and [their count] when not distributed. They travel over `distributed.host_group()` (gloo, host
    tensors), so the sizes of everything that follows are known without reading the GPU.

    Ranks may hold different batch sizes (a broken image is dropped on one rank only), so the labels are
    padded to the largest size for the collective and cut back after."""
    labels = host_labels(labels)
    if not _distributed():
        return labels, [len(labels)]
    world, group = dist.get_world_size(), host_group()
    size = torch.tensor([len(labels)], dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    sizes = torch.cat(sizes).tolist()
    padded = F.pad(labels, (0, max(sizes) - len(labels)), value=-1)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]), sizes


def gather_rows(features: torch.Tensor, sizes: list[int], differentiable: bool) -> torch.Tensor:
    """All ranks' feature rows concatenated in rank order, given each rank's count (`gather_labels`); the
    local rows themselves when there is one rank.

    Rows are padded to the largest rank's size for the collective (`distributed.gather_equal_rows`, one
    `all_gather_single`) and cut back after. With `differentiable`, the gather's backward sends each rank
    the SUM over ranks of the gradients w.r.t. its rows; without, the features are detached."""
    if not differentiable:
        features = features.detach()
    if len(sizes) == 1:
        return features
    padded = F.pad(features, (0, 0, 0, max(sizes) - len(features)))
    parts = gather_equal_rows(padded, differentiable).split(max(sizes))
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


class GlobalBatch:
    """One step's batch over all ranks (rank order), each part exchanged at most once however many times
    it is asked for. The training step hands the same GlobalBatch to the loss's centers
    (`loss_centers_of`, before the optimizer step) and to Eq. 7 (`update_from`, after it), so a step
    exchanges the labels once and the features once, not once for each.

    A part is gathered when first asked for: the labels on the host (`gather_labels`), the features by
    `gather_rows`. Features asked for `differentiable` are kept as gathered, graph and all; a later
    request for detached features gets the same values detached (the rows are the step's activations,
    which the optimizer step does not change). Only a differentiable request after a detached one gathers
    again. With one process nothing is exchanged: the local tensors come back as they are."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.local_features, self.local_labels = features, labels
        self._labels: torch.Tensor | None = None
        self._sizes: list[int] | None = None
        self._features: torch.Tensor | None = None
        self._features_differentiable = False

    def labels(self) -> torch.Tensor:
        """All ranks' labels, on the host."""
        if self._labels is None:
            self._labels, self._sizes = gather_labels(self.local_labels)
        return self._labels

    def features(self, differentiable: bool) -> torch.Tensor:
        """All ranks' features; with `differentiable`, through the autograd-aware gather (see `gather_rows`)."""
        if self._features is None or (differentiable and not self._features_differentiable):
            self.labels()  # each rank's count, to cut the padded rows back
            self._features = gather_rows(self.local_features, self._sizes, differentiable)
            self._features_differentiable = differentiable
        return self._features if differentiable else self._features.detach()


def batch_classes(labels: torch.Tensor, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the classes present, sorted, on the host; the same on `device`; each label's position among them
    and the classes' counts, on `device`) from host labels. Worked out where the labels are and sent
    without waiting, so the device is never read to learn how many classes a batch holds (a
    torch.unique on the GPU would wait for every step queued before it)."""
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    return (classes, *(t.to(device, non_blocking=True) for t in (classes, inverse, counts)))


def class_sums(features: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-class feature sums (U, d); counts (U, 1) as the features' dtype), from `batch_classes`.

    The sums are a one-hot matmul rather than index_add_, so that they are deterministic (CUDA's
    index_add_ uses atomics) and every rank computes bit-identical centers."""
    one_hot = F.one_hot(inverse, len(counts)).to(features.dtype)
    with exact_matmul(features.device):
        sums = one_hot.T @ features
    return sums, counts.to(features.dtype).unsqueeze(1)


def _version(t: torch.Tensor) -> int | None:
    """The tensor's in-place write counter (None for an inference tensor, which keeps none)."""
    try:
        return t._version
    except RuntimeError:
        return None


def _check_rate(rate: float, who: str) -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{who}: the center update rate (config key 'beta') must be in [0, 1], got {rate}")
    return rate


def _check_labels(classes: torch.Tensor, num_classes: int, who: str) -> None:
    if len(classes) and (int(classes[0]) < 0 or int(classes[-1]) >= num_classes):
        raise ValueError(f"{who}: labels must lie in [0, {num_classes}), got {int(classes[0])}..{int(classes[-1])}")


class _Centers(nn.Module):
    """What both kinds of centers offer: `loss_centers_of` / `update_from` take one step's `GlobalBatch`
    (the trainer shares one between them, so the batch crosses the ranks once); `loss_centers` / `update`
    take this rank's (features, labels) and gather what they need themselves."""

    def loss_centers(self, features: torch.Tensor, labels: torch.Tensor, check_labels: bool = True) -> torch.Tensor:
        return self.loss_centers_of(GlobalBatch(features, labels), check_labels)

    def update(self, features: torch.Tensor, labels: torch.Tensor, rate: float, check_labels: bool = True,
               check_finite: bool = True) -> None:
        self.update_from(GlobalBatch(features, labels), rate, check_labels, check_finite)

    def loss_centers_of(self, batch: GlobalBatch, check_labels: bool = True) -> torch.Tensor:
        """The (M, d) centers that enter Eq. 6 for this global batch."""
        rows, others = self._loss_rows_of(batch, check_labels)
        return rows if others is None else torch.cat([rows, others])

    def uniform_loss_of(self, batch: GlobalBatch, reduction: str = "pairs", batch_size: int = 1,
                        check_labels: bool = True) -> torch.Tensor:
        """Eq. 6 (`losses.uniform_loss`) over `loss_centers_of(batch)`, the same value and the same gradient
        to the bit on one process, computed as cheaply as this reading allows (docs/DESIGN.md §4.6):
        - rows that are constants (the other classes' stored centers) get no gradient computed: the
          gradient's half of the work shrinks from M x M to (batch classes) x M;
        - the sphere reading on CUDA takes its Gram products in split bf16 (`losses.GRAM_PRECISIONS`),
          within 1e-4 of float64 up to 100,000 centers; raw centers, and any CPU, stay exact float32;
        - under torch.distributed each rank sweeps its share of the rows (`losses.shard_rows`)."""
        rows, others = self._loss_rows_of(batch, check_labels)
        precision = "split-bf16" if self.normalize and rows.device.type == "cuda" else "exact"
        return uniform_loss(rows, reduction=reduction, batch_size=batch_size, others=others,
                            precision=precision, sharded=True)  # every rank holds the same centers (Eq. 7)


class ClassCenters(_Centers):
    """Feature-space class centers (UniformFace Eq. 6-7, read as in the module docstring). Buffers: `centers`
    (C, d) float32 and `initialized` (C,) bool, both in the state_dict.

    scope "all": every initialised center enters Eq. 6 (the paper's "all class centers"); "batch":
    only the batch's classes (the earlier port's default). normalize=True: centers of L2-normalised
    features, projected onto the unit sphere before Eq. 6 (the module docstring's "sphere" reading)."""

    def __init__(self, num_classes: int, dim: int, scope: str = "all", normalize: bool = False):
        super().__init__()
        if scope not in SCOPES:
            raise ValueError(f"ClassCenters: scope must be one of {SCOPES}, got {scope!r}")
        self.num_classes, self.dim, self.scope, self.normalize = num_classes, dim, scope, normalize
        self.register_buffer("centers", torch.zeros(num_classes, dim))
        self.register_buffer("initialized", torch.zeros(num_classes, dtype=torch.bool))
        # host copy of a GPU `initialized` (see host_initialized): the copy, the buffer it copies, its version
        self._host_copy: torch.Tensor | None = None
        self._host_copy_of: torch.Tensor | None = None
        self._host_copy_version: int | None = None

    def host_initialized(self) -> torch.Tensor:
        """`initialized` on the host, which sizes the loss's set of centers without reading the device: the
        buffer itself on the CPU; for a GPU buffer, a copy that `update` keeps in step, read back only when
        the buffer changed by other means (a loaded state, a move to another device, a caller's own
        write: its version counter tells)."""
        buffer = self.initialized
        if buffer.device.type == "cpu":
            return buffer
        if not self._host_copy_current():
            self._host_copy, self._host_copy_of, self._host_copy_version = buffer.cpu(), buffer, _version(buffer)
        return self._host_copy

    def _host_copy_current(self) -> bool:
        version = _version(self.initialized)
        return (self._host_copy is not None and self._host_copy_of is self.initialized and version is not None
                and version == self._host_copy_version)

    def _loss_rows_of(self, batch: GlobalBatch,
                      check_labels: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The centers that enter Eq. 6 for this global batch, as (the rows that depend on the features,
        the constant rows or None): c~_j = (c_j + sum_{i in j} x_i) / (1 + n_j) for the batch's initialised
        classes, the mean of the batch's features for a class seen for the first time, then (scope "all")
        the other initialised centers, detached: their normalisation takes no part in the backward pass.

        Distributed: every rank builds the same set from the global batch, and the gradient that
        `uniform_loss` gives each rank sums over the ranks to world_size x dL_u/dc (every rank computing
        the whole L_u, or each its share of the rows: `losses._UniformLoss`); the gather's backward hands
        each rank that sum for its own rows, world_size x dL_u/dx, and DDP's mean of the parameter
        gradients over the ranks cancels the factor, leaving exactly the gradient of a single process that
        ran the whole global batch.

        Give the labels as the host holds them (the data loader's CPU tensor): the batch's classes and
        the set of other centers are then worked out on the host, and nothing is read back from the
        device. `check_labels`: refuse labels outside [0, num_classes) (the trainer checks its training
        set's labels once, when it opens the set, and passes False)."""
        features, labels = batch.features(differentiable=True), batch.labels()
        dtype = torch.promote_types(features.dtype, self.centers.dtype)
        host_classes, classes, inverse, counts = batch_classes(labels, self.centers.device)
        if check_labels:
            _check_labels(host_classes, self.num_classes, "ClassCenters.loss_centers")
        sums, counts = class_sums(self._points(features.to(dtype)), inverse, counts)
        stored = self.centers[classes].to(dtype)
        seen_before = self.initialized[classes].unsqueeze(1)
        batch_centers = torch.where(seen_before, (stored + sums) / (1.0 + counts), sums / counts)
        others = None
        if self.scope == "all":
            mask = self.host_initialized().clone()
            mask[host_classes] = False
            others = self._rows(mask).to(dtype)
        return self._points(batch_centers), None if others is None else self._points(others)

    def initialized_centers(self) -> torch.Tensor:
        """The initialised centers (C_init, d), detached (for the log's figures), read as `loss_centers_of`
        reads the other centers: without reading the device."""
        return self._rows(self.host_initialized()).detach()

    def _rows(self, host_mask: torch.Tensor) -> torch.Tensor:
        """The centers a host mask picks, by row numbers sent to the device: a boolean mask on the device
        would be read back to size the result."""
        return self.centers[torch.nonzero(host_mask).squeeze(1).to(self.centers.device, non_blocking=True)]

    def _points(self, features: torch.Tensor) -> torch.Tensor:
        """Features as the centers average them, and centers as Eq. 6 takes them: projected onto the unit
        sphere (sphere reading) or as they are."""
        return F.normalize(features, dim=1) if self.normalize else features

    @torch.no_grad()
    def update_from(self, batch: GlobalBatch, rate: float, check_labels: bool = True,
                    check_finite: bool = True) -> None:
        """Eq. 7 after the optimizer step, on the global batch (its features detached): c_j <- c_j - rate *
        sum_i [y_i = j] (c_j - x_i) / (1 + n_j); a class seen for the first time is set to the mean of its
        features (whatever the rate, so rate 0 still initialises). Labels as in `loss_centers_of`.

        `check_finite`: non-finite features are refused with a ValueError, which reads the device.
        Without it nothing is read: such features leave the centers' values as they were (chosen on the
        device), and the caller learns of them from its loss, which they make non-finite too (a class
        first met in such a batch is marked initialised at its zero center; the run is stopping anyway)."""
        rate = _check_rate(rate, "ClassCenters.update")
        features, labels = batch.features(differentiable=False), batch.labels()
        host_classes, classes, inverse, counts = batch_classes(labels, self.centers.device)
        if check_labels:
            _check_labels(host_classes, self.num_classes, "ClassCenters.update")
        sums, counts = class_sums(self._points(features.to(self.centers.dtype)), inverse, counts)
        finite = torch.isfinite(sums).all()
        if check_finite and not bool(finite):
            raise ValueError("ClassCenters.update: features contain NaN or inf; the centers were left unchanged")
        stored = self.centers[classes]
        delta = (counts * stored - sums) / (1.0 + counts)
        seen_before = self.initialized[classes].unsqueeze(1)
        moved = torch.where(seen_before, stored - rate * delta, sums / counts)
        self.centers[classes] = moved if check_finite else torch.where(finite, moved, stored)
        copy_current = self._host_copy_current()
        # index_fill_ takes the value as a kernel argument (`t[i] = True` would copy a host scalar to the GPU)
        self.initialized.index_fill_(0, classes, True)
        if copy_current:  # the same write on the host copy keeps it current without a read
            self._host_copy[host_classes] = True
            self._host_copy_version = _version(self.initialized)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, scope={self.scope!r}, normalize={self.normalize}"


class WeightCenters(_Centers):
    """The earlier port's variant: the head's class weights (C, d) are the centers. The uniform loss's
    gradient flows into them, and after the step Eq. 7 moves them toward the features at `rate`.

    The head is referenced, not registered, so this module's state_dict is empty (the weights are
    saved with the head) and `.to()` leaves the head alone.

    Why it stays finite where the earlier port NaN'd at rate 0.01 / 0.1: Eq. 7 drags the weights of
    classes with similar features onto nearly the same point far from the origin (the features' norm,
    not 1). There the plain expansion |a|^2 + |b|^2 - 2 a.b rounds with an error ~eps |c|^2 larger
    than the true squared distance: it comes out negative (sqrt -> NaN) or tiny (gradient ~1/d, huge).
    `tests/test_centers.py` reproduces this. Here:
    - the distances come from centered and rescaled points (`losses.centered_and_scaled`), so the
      rounding is relative to the spread of the centers, not to their distance from the origin, and
      squares can neither overflow nor go negative (clamped at 0);
    - the uniform loss's gradient never divides by a distance at rounding-noise level: such pairs
      count as coinciding and get zero mutual gradient;
    - for rate in [0, 1] the update is a convex combination of the old weight and the batch mean of the
      class's features (1 - rate n/(1+n) and rate n/(1+n), both >= 0): it can never overshoot past
      the features, and non-finite features are refused before they touch the weights.
    (With the A-Softmax head, whose training forward renormalises the rows in place as Caffe does, the
    moved weights are also pulled back onto the unit sphere at the next step.)"""

    def __init__(self, head: nn.Module, scope: str = "all", normalize: bool = False):
        super().__init__()
        if scope not in SCOPES:
            raise ValueError(f"WeightCenters: scope must be one of {SCOPES}, got {scope!r}")
        if not isinstance(getattr(head, "weight", None), torch.Tensor) or head.weight.dim() != 2:
            raise ValueError("WeightCenters: the head must have a (num_classes, dim) `weight`")
        object.__setattr__(self, "head", head)  # a reference, not a submodule
        self.scope, self.normalize = scope, normalize

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def _loss_rows_of(self, batch: GlobalBatch, check_labels: bool = True) -> tuple[torch.Tensor, None]:
        """(the class weights (scope "batch": those of the global batch's classes, worked out on the host as
        in `ClassCenters.loss_centers_of`), None): every row is differentiable. The features are not needed,
        and not gathered."""
        weight = self.weight
        if weight.dtype not in (torch.float32, torch.float64):
            weight = weight.float()
        if self.scope == "batch":
            classes = torch.unique(batch.labels())
            if check_labels:
                _check_labels(classes, len(weight), "WeightCenters.loss_centers")
            weight = weight[classes.to(weight.device, non_blocking=True)]
        return (F.normalize(weight, dim=1) if self.normalize else weight), None

    @torch.no_grad()
    def update_from(self, batch: GlobalBatch, rate: float, check_labels: bool = True,
                    check_finite: bool = True) -> None:
        """Eq. 7 on the class weights, from the global batch (its features detached); the checks as in
        `ClassCenters.update_from`. Rate 0 moves nothing and gathers nothing."""
        rate = _check_rate(rate, "WeightCenters.update")
        if rate == 0.0:
            return
        weight = self.weight
        features, labels = batch.features(differentiable=False), batch.labels()
        host_classes, classes, inverse, counts = batch_classes(labels, weight.device)
        if check_labels:
            _check_labels(host_classes, len(weight), "WeightCenters.update")
        sums, counts = class_sums(features.to(weight.dtype), inverse, counts)
        finite = torch.isfinite(sums).all()
        if check_finite and not bool(finite):
            raise ValueError("WeightCenters.update: features contain NaN or inf; the weights were left unchanged")
        stored = weight[classes]
        moved = stored - rate * (counts * stored - sums) / (1.0 + counts)
        weight[classes] = moved if check_finite else torch.where(finite, moved, stored)

    def extra_repr(self) -> str:
        return f"scope={self.scope!r}, normalize={self.normalize} (centers = head.weight)"


@torch.no_grad()
def mean_min_distance(centers: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Mean over centers of the Euclidean distance to the nearest other center (for logs and reports).

    The nearest neighbour is found blockwise by the expansion; its distance is then recomputed from
    the difference itself, so near-coinciding centers are not blurred by the expansion's rounding."""
    if centers.dim() != 2 or len(centers) < 2:
        raise ValueError(f"mean_min_distance: need (M >= 2, d) centers, got shape {tuple(centers.shape)}")
    points = centers.float() if centers.dtype not in (torch.float32, torch.float64) else centers
    unit, _ = centered_and_scaled(points)
    sq_norms = (unit * unit).sum(1)
    m = len(points)
    chunk = default_chunk_size(m) if chunk_size is None else int(chunk_size)
    nearest = torch.empty(m, dtype=torch.long, device=points.device)
    with exact_matmul(points.device):
        for start in range(0, m, chunk):
            stop = min(start + chunk, m)
            distances = block_distances(unit, sq_norms, start, stop)
            distances.diagonal(offset=start).fill_(float("inf"))
            nearest[start:stop] = distances.argmin(1)
    return (points - points[nearest]).norm(dim=1).mean()


@torch.no_grad()
def mean_min_angle(directions: torch.Tensor, chunk_size: int | None = None) -> float:
    """Mean over rows of the angle, in degrees, to the nearest other row, after unit normalisation: how
    far apart the classes' directions are (the quantity the uniform loss should raise on the sphere)."""
    return float(mean_min_angle_tensor(directions, chunk_size))


@torch.no_grad()
def mean_min_angle_tensor(directions: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """`mean_min_angle` as a float64 0-d tensor on the rows' device, for a caller that reads several
    figures back from the device at once (the trainer's log points)."""
    if directions.dim() != 2 or len(directions) < 2:
        raise ValueError(f"mean_min_angle: need (M >= 2, d) rows, got shape {tuple(directions.shape)}")
    largest_cosine, _ = _nearest_neighbours(directions, chunk_size, by_distance=False)
    return _mean_angle(largest_cosine)


@torch.no_grad()
def nearest_center_figures(centers: torch.Tensor, chunk_size: int | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(`mean_min_distance`, `mean_min_angle_tensor`) of the same rows from one blockwise sweep over their
    pairs instead of two: each figure is O(M^2 d), ~1e11 operations at 10,572 classes.

    Each figure keeps its own nearest neighbour (for centers of unequal norms the nearest by distance need
    not be the nearest by angle). The sweep computes each block of float64 cosines once, exactly as
    `mean_min_angle_tensor` does (so the angle is the same to the bit), takes its row maxima, and then turns
    the same block into squared distances, |a|^2 + |b|^2 - 2 |a| |b| cos(a, b), for the nearest by
    distance, whose distance is recomputed from the difference itself as in `mean_min_distance` (so the
    distance is the same to the bit wherever both find the same neighbour). In float64 the expansion's
    rounding, ~1e-16 |c|^2, is below that of the float32 centred expansion `mean_min_distance` searches
    with (~1e-7 times the centers' spread squared) unless every center lies more than ~2e4 spreads from
    the origin; only a near-tie within that rounding can pick another neighbour, whose squared distance
    then exceeds the nearest's by at most twice the rounding."""
    if centers.dim() != 2 or len(centers) < 2:
        raise ValueError(f"nearest_center_figures: need (M >= 2, d) centers, got shape {tuple(centers.shape)}")
    largest_cosine, nearest = _nearest_neighbours(centers, chunk_size, by_distance=True)
    points = centers.float() if centers.dtype not in (torch.float32, torch.float64) else centers
    return (points - points[nearest]).norm(dim=1).mean(), _mean_angle(largest_cosine)


def _nearest_neighbours(rows: torch.Tensor, chunk_size: int | None, by_distance: bool
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(each row's largest float64 cosine to another row; with `by_distance`, each row's nearest other row
    by Euclidean distance, else None), blockwise: O(chunk x M) memory."""
    wide = rows.double()
    unit = F.normalize(wide, dim=1)
    # F.normalize's own divisor (the norm, at least 1e-12): divisor x unit gives the row back
    divisor = wide.norm(dim=1).clamp_min(1e-12)
    sq_norms = (wide * wide).sum(1)
    m = len(unit)
    chunk = default_chunk_size(m) if chunk_size is None else int(chunk_size)
    largest_cosine = torch.empty(m, dtype=torch.float64, device=unit.device)
    nearest = torch.empty(m, dtype=torch.long, device=unit.device) if by_distance else None
    for start in range(0, m, chunk):
        stop = min(start + chunk, m)
        block = unit[start:stop] @ unit.T
        diagonal = block.diagonal(offset=start)
        diagonal.fill_(-2.0)
        largest_cosine[start:stop] = block.max(1).values
        if by_distance:
            # the same block, in place, becomes |a|^2 + |b|^2 - 2 |a| |b| cos(a, b)
            block.mul_(divisor[start:stop, None] * -2.0).mul_(divisor)
            block.add_(sq_norms[start:stop, None]).add_(sq_norms)
            diagonal.fill_(float("inf"))
            nearest[start:stop] = block.argmin(1)
    return largest_cosine, nearest


def _mean_angle(largest_cosine: torch.Tensor) -> torch.Tensor:
    """Mean, in degrees, of the angles whose cosines these are."""
    return torch.rad2deg(torch.acos(largest_cosine.clamp(-1.0, 1.0))).mean()
