"""10-fold face verification accuracy (SphereFace's evaluation.m; insightface's verification.py), two protocols
(docs/DESIGN.md §7).

* ``sphereface`` follows the official SphereFace `test/code/evaluation.m` (wy1iu/sphereface): a feature is
  [f(img); f(flip(img))]; for held-out fold k, mu = the mean of the left AND right features of the other
  folds (one mean over both sides), subtract mu from every feature, L2-normalise, score = cosine; the
  threshold grid is (-10000..10000)/10000 and the chosen threshold is the mean of all grid values tying
  for the best training accuracy; a same pair is right when score > t, a different pair when score < t.
* ``insightface`` follows insightface's `verification.py` (`calculate_roc`): embedding =
  normalise(f + f_flip); squared L2 distance; grid `np.arange(0, 4, 0.01)`; `KFold(10, shuffle=False)`;
  the first best threshold (argmax); a pair is called same when distance < t.

Folds are consecutive blocks in pair order. When the pair count is not a multiple of `n_folds` the first
`N % n_folds` folds get one pair more (sklearn's `KFold(shuffle=False)`, which insightface uses; for
LFW's 6000 = 10 x 600 it is evaluation.m's `ceil(i / 600)`). A fold's accuracy is its correct pairs over
all its pairs, whatever its mix of same and different pairs (evaluation.m's `getAccuracy`), and the mean is
the unweighted mean over folds (`mean(ACCs)`). The std is the population std (numpy's, as insightface).

All arithmetic is float64 (evaluation.m casts features to double). Instead of evaluation.m's loop over
20,001 thresholds, the training accuracy at every grid value comes from sorted scores and `searchsorted`,
which applies the very same strict comparisons, so for the same scores the counts are identical; our
scores match evaluation.m's to float64 rounding (~1e-15), far below the grid step of 1e-4.

Pairs flagged `invalid` (e.g. an image missing) keep their place, so fold boundaries never move; they
are left out of mu and count as wrong at every threshold. Likewise a pair whose score is not finite.
"""
from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..base.atomic import atomic_write_bytes
from ..base.registry import PROTOCOLS

# evaluation.m: thresholds = (-thrNum:thrNum) / thrNum with thrNum = 10000.
SPHEREFACE_THRESHOLDS = np.arange(-10000, 10001) / 10000
# insightface verification.py: thresholds = np.arange(0, 4, 0.01).
INSIGHTFACE_THRESHOLDS = np.arange(0, 4, 0.01)
FAR_TARGETS = (1e-3, 1e-2)


@dataclass(frozen=True)
class KFoldResult(Mapping):
    """Readable as attributes (`r.accuracy_mean`) or as a mapping (`r["accuracy_mean"]`, `dict(r)`)."""
    protocol: str
    n_folds: int
    accuracy_mean: float
    accuracy_std: float
    fold_accuracies: list      # fractions 0..1, one per fold
    thresholds: list           # the threshold chosen on the other folds, one per fold

    def __getitem__(self, key):
        if key not in self._keys():
            raise KeyError(f"{key!r} (a KFoldResult has {', '.join(self._keys())})")
        return getattr(self, key)

    def __iter__(self):
        return iter(self._keys())

    def __len__(self):
        return len(self._keys())

    def to_dict(self) -> dict:
        """Plain Python values only, ready for `json.dumps`."""
        return asdict(self)

    @classmethod
    def _keys(cls) -> tuple:
        return tuple(f.name for f in fields(cls))


def kfold_accuracy(feat_left, feat_right, is_same, protocol: str = "sphereface", n_folds: int = 10,
                   invalid=None) -> KFoldResult:
    """10-fold verification accuracy of pairs (feat_left[i], feat_right[i]), same person iff is_same[i].

    feat_left, feat_right: (N, D) numpy arrays or torch tensors (any device), already combined with the
    flipped image by `combine_flip`. is_same: N bools (or 0/1, or evaluation.m's 1/-1 flags).
    invalid: optional N bools, pairs to count as wrong without moving the folds.
    """
    check_protocol(protocol)
    left, right = _features(feat_left, "feat_left"), _features(feat_right, "feat_right")
    same = _labels(is_same, "is_same")
    n = len(same)
    if left.shape != right.shape or len(left) != n:
        raise ValueError(f"feat_left {left.shape}, feat_right {right.shape} and is_same ({n},) must describe "
                         "the same number of pairs with the same feature size")
    bad = np.zeros(n, bool) if invalid is None else _labels(invalid, "invalid")
    if len(bad) != n:
        raise ValueError(f"invalid has {len(bad)} entries for {n} pairs")
    if not isinstance(n_folds, (int, np.integer)) or not 2 <= n_folds <= n:
        raise ValueError(f"n_folds must be an integer from 2 to the number of pairs ({n}), got {n_folds!r}")

    fold = fold_ids(n, n_folds)
    if protocol == "sphereface":
        per_fold, choose = _sphereface_fold_scores(left, right, fold, ~bad, n_folds), sphereface_threshold
    else:
        distance = squared_distance(left, right)  # the same for every fold
        distance[bad] = np.nan
        per_fold, choose = (distance for _ in range(n_folds)), insightface_threshold
    accuracies, thresholds = np.zeros(n_folds), np.zeros(n_folds)
    for k, value in enumerate(per_fold):
        test = fold == k
        t = choose(value[~test], same[~test])
        correct = _correct(value[test], same[test], np.array([t]), protocol)[0]
        accuracies[k], thresholds[k] = correct / test.sum(), t
    return KFoldResult(protocol=protocol, n_folds=int(n_folds), accuracy_mean=float(accuracies.mean()),
                       accuracy_std=float(accuracies.std()), fold_accuracies=accuracies.tolist(),
                       thresholds=thresholds.tolist())


def _sphereface_fold_scores(left: np.ndarray, right: np.ndarray, fold: np.ndarray, valid: np.ndarray,
                            n_folds: int):
    """For each held-out fold k in turn, the cosine of every pair after subtracting mu_k, the mean of the
    left and right features of the valid pairs outside fold k (evaluation.m). Modifies left and right.

    Rather than re-centring all N x D features for each fold, centre them once on the mean of all valid
    features; mu_k is then a small shift d, and per fold only d.l and d.r are new:
    (l - d).(r - d) = l.r - d.l - d.r + d.d and |l - d|^2 = l.l - 2 d.l + d.d. Centring first keeps these
    sums free of cancellation even when the features share a large offset."""
    member = np.stack([(fold == k) & valid for k in range(n_folds)]).astype(np.float64)   # (folds, N)
    sums = member @ left + member @ right          # per fold: sum of its valid left and right features
    counts = 2 * member.sum(1)
    overall = sums.sum(0) / max(counts.sum(), 1)
    left -= overall
    right -= overall
    sums -= counts[:, None] * overall
    lr, ll, rr = (np.einsum("ij,ij->i", a, b) for a, b in ((left, right), (left, left), (right, right)))
    for k in range(n_folds):
        d = (sums.sum(0) - sums[k]) / max(counts.sum() - counts[k], 1)
        dl, dr, dd = left @ d, right @ d, d @ d
        with np.errstate(invalid="ignore", divide="ignore"):  # a zero vector: 0/0 = NaN, as in MATLAB
            score = (lr - dl - dr + dd) / np.sqrt(np.maximum(ll - 2 * dl + dd, 0) * np.maximum(rr - 2 * dr + dd, 0))
        score[~valid] = np.nan
        yield score


def fold_ids(n_pairs: int, n_folds: int) -> np.ndarray:
    """0-based fold of each pair: consecutive blocks, the first `n_pairs % n_folds` one pair longer."""
    return np.concatenate([np.full(len(block), k) for k, block in
                           enumerate(np.array_split(np.arange(n_pairs), n_folds))])


def sphereface_threshold(score, is_same, grid: np.ndarray = SPHEREFACE_THRESHOLDS) -> float:
    """evaluation.m `getThreshold`: the mean of every grid value reaching the best accuracy."""
    correct = _correct(np.asarray(score, np.float64), np.asarray(is_same, bool), grid, "sphereface")
    return float(grid[correct == correct.max()].mean())


def insightface_threshold(distance, is_same, grid: np.ndarray = INSIGHTFACE_THRESHOLDS) -> float:
    """insightface `calculate_roc`: the first grid value reaching the best accuracy (np.argmax)."""
    correct = _correct(np.asarray(distance, np.float64), np.asarray(is_same, bool), grid, "insightface")
    return float(grid[np.argmax(correct)])


def _correct(value: np.ndarray, same: np.ndarray, grid: np.ndarray, protocol: str) -> np.ndarray:
    """Number of correctly decided pairs at each grid threshold. sphereface: same iff score > t, different
    iff score < t (a score equal to t is wrong either way). insightface: same iff distance < t, so a
    different pair is right when distance >= t. A non-finite value is wrong at every threshold."""
    ok = np.isfinite(value)
    pos, neg = np.sort(value[same & ok]), np.sort(value[~same & ok])
    if protocol == "sphereface":
        return (len(pos) - np.searchsorted(pos, grid, side="right")) + np.searchsorted(neg, grid, side="left")
    return np.searchsorted(pos, grid, side="left") + (len(neg) - np.searchsorted(neg, grid, side="left"))


def combine_flip(f, f_flip, protocol: str = "sphereface") -> np.ndarray:
    """One feature per image from its features with and without horizontal flip:
    sphereface [f, f_flip] (concatenated, evaluation.m `extractDeepFeature`);
    insightface normalise(f + f_flip) (insightface `test`: embeddings summed, then `normalize`)."""
    check_protocol(protocol)
    f, f_flip = _features(f, "f"), _features(f_flip, "f_flip")
    if f.shape != f_flip.shape:
        raise ValueError(f"f {f.shape} and f_flip {f_flip.shape} must have the same shape")
    if protocol == "sphereface":
        return np.concatenate([f, f_flip], axis=1)
    return l2_normalize(f + f_flip)


def pair_scores(feat_left, feat_right, protocol: str = "sphereface") -> np.ndarray:
    """One similarity per pair, higher = more alike, for ROC curves over all pairs at once.
    sphereface: cosine after subtracting the mean of all left and right features (evaluation.m's
    centring, with every pair in the mean); insightface: minus the squared distance of unit vectors."""
    check_protocol(protocol)
    left, right = _features(feat_left, "feat_left"), _features(feat_right, "feat_right")
    if left.shape != right.shape:
        raise ValueError(f"feat_left {left.shape} and feat_right {right.shape} must have the same shape")
    if protocol == "sphereface":
        mu = np.concatenate([left, right]).mean(0)
        return cosine(left - mu, right - mu)
    return -squared_distance(left, right)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero (sklearn `normalize`)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm == 0, 1.0, norm)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine a.b / (|a| |b|) without temporaries of the inputs' size; a zero row gives NaN
    there, as in evaluation.m (0/0), and so counts as wrong."""
    dot = np.einsum("ij,ij->i", a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return dot / np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))


def squared_distance(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """insightface: `np.sum(np.square(e1 - e2), 1)` after `normalize`."""
    return np.square(l2_normalize(left) - l2_normalize(right)).sum(1)


def roc_points(scores, is_same) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of accepting pairs whose score >= a threshold, every threshold kept."""
    from sklearn.metrics import roc_curve

    scores, same = _scores_and_labels(scores, is_same)
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    return fpr, tpr


def roc_metrics(scores, is_same) -> dict:
    """`tar_at_far_1e-3`, `tar_at_far_1e-2` (the best true-accept rate whose false-accept rate does not
    exceed the target; no interpolation), `auc`, and `eer` (where false-accept = false-reject, linearly
    interpolated between the two ROC points that bracket it)."""
    return curve_metrics(*roc_points(scores, is_same))


def curve_metrics(fpr: np.ndarray, tpr: np.ndarray) -> dict:
    """`roc_metrics` from the ROC points themselves (for a caller that also draws them: one sort, not two)."""
    from sklearn.metrics import auc

    out = {f"tar_at_far_{far:.0e}".replace("e-0", "e-"): float(tpr[fpr <= far].max()) for far in FAR_TARGETS}
    out["auc"] = float(auc(fpr, tpr))
    fnr = 1.0 - tpr
    # Along the curve fnr falls from 1 and fpr rises to 1, so they cross after the first point (0, 0).
    i = int(np.argmax(fnr <= fpr))
    gap0, gap1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    out["eer"] = float(fpr[i - 1] + gap0 / (gap0 - gap1) * (fpr[i] - fpr[i - 1]))
    return out


def roc_summary(left, right, is_same, protocol: str, roc_png=None, label: str | None = None,
                title: str = "ROC") -> dict:
    """TAR at FAR 1e-3 / 1e-2, AUC and EER over all the given pairs (one global mean for sphereface:
    docs/DESIGN.md §7.5), and the figure at `roc_png` when given. A set of only same (or only different)
    pairs has no ROC: the four figures are None and `roc_note` says why."""
    if is_same.all() or not is_same.any():
        return {"tar_at_far_1e-3": None, "tar_at_far_1e-2": None, "auc": None, "eer": None,
                "roc_note": "no ROC: the set holds only " + ("same" if is_same.all() else "different") + " pairs"}
    scores = pair_scores(left, right, protocol)
    fpr, tpr = roc_points(scores, is_same)
    metrics = curve_metrics(fpr, tpr)
    if roc_png is not None:
        save_roc_png(fpr, tpr, roc_png, label=f"{label or 'model'} (AUC {metrics['auc']:.4f})",
                     title=f"{title}, {protocol} protocol, {len(scores)} pairs")
        metrics["roc_png"] = str(roc_png)
    return metrics


def save_roc_png(fpr, tpr, path: str | Path, label: str | None = None, title: str = "ROC") -> None:
    """ROC plot (false accept rate vs true accept rate) as a PNG, written atomically."""
    axes = new_figure(5, 5, layout=None).add_subplot()
    figure = axes.figure
    axes.plot(np.asarray(fpr), np.asarray(tpr), label=label)
    axes.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false accept rate", ylabel="true accept rate", title=title)
    axes.grid(alpha=0.3)
    if label:
        axes.legend(loc="lower right")
    atomic_write_bytes(path, figure_png_bytes(figure))


def new_figure(width: float, height: float, layout: str | None = "constrained"):
    """A Figure on its own Agg canvas (no pyplot, no global backend), laid out by `layout` (None: margins
    set by hand)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def figure_png_bytes(figure, dpi: float | None = None) -> bytes:
    """A matplotlib figure encoded as PNG, in memory, so that the caller writes it atomically. `dpi` None
    keeps matplotlib's `savefig.dpi` setting (by default the figure's own dpi). The figure is left open:
    the callers build `Figure` objects without pyplot, which nothing keeps alive once they are dropped."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def check_protocol(protocol: str) -> None:
    """ValueError naming the protocols unless `protocol` is one of them."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def _to_numpy(x):
    if hasattr(x, "detach"):  # a torch tensor, possibly on the GPU
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _features(x, name: str) -> np.ndarray:
    x = _to_numpy(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-d (N, D) array of features, got shape {x.shape}")
    return np.array(x, dtype=np.float64)  # always a copy: kfold_accuracy centres it in place


def _labels(x, name: str) -> np.ndarray:
    x = _to_numpy(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {x.shape}")
    if x.dtype == bool:
        return x
    if not np.isin(x, (-1, 0, 1)).all():
        raise ValueError(f"{name} must hold bools, 0/1 or 1/-1 flags; found values {np.unique(x)[:5]}")
    return x == 1


def _scores_and_labels(scores, is_same) -> tuple[np.ndarray, np.ndarray]:
    scores, same = _to_numpy(scores).astype(np.float64), _labels(is_same, "is_same")
    if scores.shape != same.shape:
        raise ValueError(f"scores {scores.shape} and is_same {same.shape} must have one entry per pair")
    if same.all() or not same.any():
        raise ValueError("a ROC needs both same and different pairs; is_same holds only one kind")
    return scores, same
