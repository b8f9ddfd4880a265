"""Speed of the sphereface-protocol 10-fold evaluation (SphereFace's evaluation.m) against a baseline in the same run.

    PYTHONPATH=code python bench/bench_verification.py [--full]

Data: 6,000 LFW-ordered pairs (10 folds x 300 same + 300 different) of 1,024-d float32 features
([f; f_flip]-sized) with an identity signal and a common offset, so accuracy is far from 0.5 and the
mean subtraction matters.

Baseline: the same protocol written the way sphereface_pytorch's `lfw_eval.py` and the earlier port
search thresholds: a Python loop over the 20,001 thresholds, and for each one a Python loop over the
5,400 training pairs counting correct decisions, then evaluation.m's mean of the tying thresholds.
Its threshold loop would take minutes, so by default it runs on every 100th grid value (201 per fold,
all 10 folds, per-fold centring included) and its time is scaled to the full grid: the loop's cost is
linear in the number of thresholds. `--full` runs it on the whole grid instead (several minutes).
Both sides' thresholds on the subsampled grid are checked to be identical before timing counts.
"""
import argparse
import sys
import time

import numpy as np

from uniformface.eval.protocols import SPHEREFACE_THRESHOLDS, fold_ids, kfold_accuracy, sphereface_threshold

N_FOLDS, PER_SIDE, DIM = 10, 300, 1024


def make_features(seed=0):
    rng = np.random.default_rng(seed)
    same = np.tile(np.r_[np.ones(PER_SIDE, bool), np.zeros(PER_SIDE, bool)], N_FOLDS)
    n = len(same)
    identity = rng.normal(size=(n, DIM))
    offset = 3 * rng.normal(size=DIM)
    left = identity + 2.5 * rng.normal(size=(n, DIM)) + offset
    other = np.where(same[:, None], identity, rng.normal(size=(n, DIM)))
    right = other + 2.5 * rng.normal(size=(n, DIM)) + offset
    return left.astype(np.float32), right.astype(np.float32), same


def baseline_accuracy(scores, flags, threshold):
    """lfw_eval.py `eval_acc` shape: one Python pass over the pairs (evaluation.m's strict rule)."""
    correct = 0
    for score, flag in zip(scores, flags):
        if (flag and score > threshold) or (not flag and score < threshold):
            correct += 1
    return correct / len(scores)


def baseline(left, right, same, grid):
    """Per fold: centre on the other folds' mean, cosine, then a Python loop over `grid`.
    Also returns the seconds spent in the threshold loop (the part that grows with the grid)."""
    left, right = left.astype(np.float64), right.astype(np.float64)
    fold = fold_ids(len(same), N_FOLDS)
    accuracies, thresholds, loop_seconds = [], [], 0.0
    for k in range(N_FOLDS):
        train, test = fold != k, fold == k
        mu = np.concatenate([left[train], right[train]]).mean(0)
        a, b = left - mu, right - mu
        scores = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
        train_scores, train_flags = scores[train].tolist(), same[train].tolist()
        start = time.perf_counter()
        accuracy = [baseline_accuracy(train_scores, train_flags, t) for t in grid.tolist()]
        loop_seconds += time.perf_counter() - start
        best = max(accuracy)
        t = float(np.mean([g for g, acc in zip(grid, accuracy) if acc == best]))
        accuracies.append(baseline_accuracy(scores[test].tolist(), same[test].tolist(), t))
        thresholds.append(t)
    return accuracies, thresholds, loop_seconds


def ours_on_grid(left, right, same, grid):
    """Our vectorised threshold search on the same grid, for the agreement check."""
    left, right = left.astype(np.float64), right.astype(np.float64)
    fold = fold_ids(len(same), N_FOLDS)
    out = []
    for k in range(N_FOLDS):
        train = fold != k
        mu = np.concatenate([left[train], right[train]]).mean(0)
        a, b = left - mu, right - mu
        scores = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
        out.append(sphereface_threshold(scores[train], same[train], grid=grid))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="run the baseline on all 20,001 thresholds")
    parser.add_argument("--stride", type=int, default=100, help="baseline grid subsampling (default 100)")
    args = parser.parse_args(argv)

    left, right, same = make_features()
    kfold_accuracy(left[:600], right[:600], same[:600])  # warm-up (imports, allocator)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = kfold_accuracy(left, right, same, protocol="sphereface", n_folds=N_FOLDS)
        times.append(time.perf_counter() - start)
    ours = float(np.median(times))
    print(f"ours: kfold_accuracy sphereface, {len(same)} pairs x {DIM}-d, 20,001 thresholds: "
          f"{ours * 1000:.1f} ms (median of 3), accuracy {100 * result.accuracy_mean:.3f} %")

    stride = 1 if args.full else args.stride
    grid = SPHEREFACE_THRESHOLDS[::stride]
    start = time.perf_counter()
    base_acc, base_thr, loop = baseline(left, right, same, grid)
    measured = time.perf_counter() - start
    if args.full:
        agree = base_acc == result.fold_accuracies and np.allclose(base_thr, result.thresholds, atol=1e-12)
        estimate, how = measured, "measured on the full grid"
    else:
        agree = np.allclose(base_thr, ours_on_grid(left, right, same, grid), rtol=0, atol=1e-12)
        estimate = (measured - loop) + loop * len(SPHEREFACE_THRESHOLDS) / len(grid)
        how = (f"measured {measured:.2f} s with {len(grid)} of the 20,001 thresholds (every {stride}th) in all "
               f"{N_FOLDS} folds; its threshold loop ({loop:.2f} s) scaled linearly to the full grid")
    print(f"baseline: Python loop over thresholds x Python loop over pairs: {estimate:.1f} s ({how})")
    print(f"agreement with the baseline: {'yes' if agree else 'NO'}")
    ratio = estimate / ours
    print(f"speed ratio baseline / ours: {ratio:,.0f}x (target >= 100x)")
    return 0 if agree and ratio >= 100 else 1


if __name__ == "__main__":
    sys.exit(main())
