"""k-fold verification against independent float64 references written from the protocol text (SphereFace's evaluation.m, insightface's verification.py):
plain loops over folds and over every grid threshold, no code shared with `uniformface.eval.protocols`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from uniformface.eval.protocols import (INSIGHTFACE_THRESHOLDS, SPHEREFACE_THRESHOLDS, check_protocol,
                                        combine_flip, figure_png_bytes, fold_ids, insightface_threshold,
                                        kfold_accuracy, pair_scores, roc_metrics, roc_points, save_roc_png,
                                        sphereface_threshold)

CODE = Path(__file__).resolve().parents[1] / "code"
GRID_SPHEREFACE = [k / 10000 for k in range(-10000, 10001)]   # evaluation.m: (-thrNum:thrNum)/thrNum
GRID_INSIGHTFACE = np.arange(0, 4, 0.01)                      # insightface verification.py


# ---------------------------------------------------------------- references (straight from the text)

def reference_folds(n, n_folds):
    """Consecutive blocks; the first n % n_folds blocks one pair longer."""
    sizes = [n // n_folds + (1 if k < n % n_folds else 0) for k in range(n_folds)]
    return [k for k, size in enumerate(sizes) for _ in range(size)]


def unit(v):
    return v / np.sqrt(np.sum(v * v))


def reference_sphereface_threshold(scores, same):
    """getThreshold: accuracy at each of the 20,001 thresholds; the mean of all reaching the maximum."""
    pos, neg = scores[same], scores[~same]
    accuracy = [(np.count_nonzero(pos > t) + np.count_nonzero(neg < t)) / len(scores) for t in GRID_SPHEREFACE]
    best = max(accuracy)
    return float(np.mean([t for t, a in zip(GRID_SPHEREFACE, accuracy) if a == best]))


def reference_sphereface(left, right, same, n_folds, center="train", invalid=None):
    """evaluation.m. center: 'train' (the protocol: one mean over left and right of the other folds),
    or the wrong variants 'all' (every fold), 'none', 'per_side' (separate left / right means)."""
    n = len(same)
    invalid = np.zeros(n, bool) if invalid is None else invalid
    fold = np.array(reference_folds(n, n_folds))
    accuracies, thresholds = [], []
    for k in range(n_folds):
        train = [i for i in range(n) if fold[i] != k]
        test = [i for i in range(n) if fold[i] == k]
        usable = [i for i in train if not invalid[i]] if center == "train" else [i for i in range(n) if not invalid[i]]
        mu_left = mu_right = np.mean(np.concatenate([left[usable], right[usable]]), axis=0)
        if center == "none":
            mu_left = mu_right = np.zeros(left.shape[1])
        if center == "per_side":
            mu_left, mu_right = left[usable].mean(0), right[usable].mean(0)
        scores = np.array([np.nan if invalid[i] else np.sum(unit(left[i] - mu_left) * unit(right[i] - mu_right))
                           for i in range(n)])
        t = reference_sphereface_threshold(scores[train], same[train])
        correct = sum(1 for i in test if (same[i] and scores[i] > t) or (not same[i] and scores[i] < t))
        accuracies.append(correct / len(test))
        thresholds.append(t)
    return accuracies, thresholds


def reference_insightface(left, right, same, n_folds):
    """insightface calculate_roc: normalise, squared L2, grid 0..4 step 0.01, first best, same iff d < t."""
    n = len(same)
    dist = np.array([np.sum((unit(left[i]) - unit(right[i])) ** 2) for i in range(n)])
    fold = np.array(reference_folds(n, n_folds))
    accuracies, thresholds = [], []
    for k in range(n_folds):
        train, test = fold != k, fold == k
        acc_train = [np.mean(np.less(dist[train], t) == same[train]) for t in GRID_INSIGHTFACE]
        best = 0
        for i in range(len(acc_train)):
            if acc_train[i] > acc_train[best]:
                best = i
        t = GRID_INSIGHTFACE[best]
        accuracies.append(float(np.mean(np.less(dist[test], t) == same[test])))
        thresholds.append(float(t))
    return accuracies, thresholds


# ---------------------------------------------------------------- data

def lfw_like_labels(n_folds, per_side):
    """pairs.txt order: each fold `per_side` same pairs then `per_side` different pairs."""
    return np.tile(np.r_[np.ones(per_side, bool), np.zeros(per_side, bool)], n_folds)


def pair_features(same, dim, rng, noise=1.0, offset=None):
    base = rng.normal(size=(len(same), dim))
    left = base + noise * rng.normal(size=base.shape)
    right = np.where(same[:, None], base, rng.normal(size=base.shape)) + noise * rng.normal(size=base.shape)
    if offset is not None:
        left, right = left + offset, right + offset
    return left, right


def assert_matches(result, reference, n_folds):
    accuracies, thresholds = reference
    assert len(result.fold_accuracies) == len(result.thresholds) == n_folds
    assert result.fold_accuracies == accuracies                      # exactly: same counts, same denominators
    np.testing.assert_allclose(result.thresholds, thresholds, rtol=0, atol=1e-12)


def checked_kfold(protocol, seed, n_folds, per_side, dim, noise):
    """Noisy pairs in pairs.txt order (`per_side` same, then `per_side` different pairs a fold) scored with
    `protocol`, the result checked against that protocol's reference; returns (result, left, right, same)."""
    reference = {"sphereface": reference_sphereface, "insightface": reference_insightface}[protocol]
    rng = np.random.default_rng(seed)
    same = lfw_like_labels(n_folds, per_side)
    left, right = pair_features(same, dim, rng, noise=noise)
    result = kfold_accuracy(left, right, same, protocol=protocol, n_folds=n_folds)
    assert_matches(result, reference(left, right, same, n_folds), n_folds)
    return result, left, right, same


# ---------------------------------------------------------------- sphereface protocol

def test_threshold_grids_are_the_protocols():
    np.testing.assert_array_equal(SPHEREFACE_THRESHOLDS, np.array(GRID_SPHEREFACE))
    assert len(SPHEREFACE_THRESHOLDS) == 20001
    np.testing.assert_array_equal(INSIGHTFACE_THRESHOLDS, GRID_INSIGHTFACE)
    assert len(INSIGHTFACE_THRESHOLDS) == 400


def test_fold_ids_are_consecutive_blocks():
    # LFW: 6000 pairs, fold = ceil(i / 600) in evaluation.m (1-based i and fold)
    np.testing.assert_array_equal(fold_ids(6000, 10), [int(np.ceil(i / 600)) - 1 for i in range(1, 6001)])
    np.testing.assert_array_equal(fold_ids(23, 5), reference_folds(23, 5))
    assert np.bincount(fold_ids(23, 5)).tolist() == [5, 5, 5, 4, 4]


def test_sphereface_matches_reference_on_noisy_pairs():
    result, *_ = checked_kfold("sphereface", seed=0, n_folds=10, per_side=20, dim=16, noise=1.2)
    assert 0.6 < result.accuracy_mean < 1.0  # neither trivial nor chance: thresholds matter


def test_sphereface_threshold_is_the_mean_of_all_tying_grid_values():
    """Separable pairs: every grid value between the best different and the worst same score ties."""
    result, left, right, same = checked_kfold("sphereface", seed=1, n_folds=5, per_side=12, dim=64, noise=0.1)
    assert result.fold_accuracies == [1.0] * 5
    fold = np.array(reference_folds(len(same), 5))
    for k, t in enumerate(result.thresholds):
        train = fold != k
        mu = np.concatenate([left[train], right[train]]).mean(0)
        scores = np.array([np.sum(unit(a - mu) * unit(b - mu)) for a, b in zip(left, right)])
        lo = np.floor(scores[train & ~same].max() * 10000) + 1   # first grid value above every different
        hi = np.ceil(scores[train & same].min() * 10000) - 1     # last grid value below every same
        assert hi - lo > 100                                     # a wide tie, so first/last/mean all differ
        assert t == pytest.approx((lo + hi) / 2 / 10000, abs=1e-12)


def test_sphereface_unbalanced_and_uneven_folds():
    rng = np.random.default_rng(2)
    n, n_folds = 205, 7
    same = rng.random(n) < 0.35
    left, right = pair_features(same, 12, rng, noise=1.0)
    fold = np.array(reference_folds(n, n_folds))
    assert len(set(np.bincount(fold))) > 1                       # uneven fold sizes
    assert len({int(same[fold == k].sum()) for k in range(n_folds)}) > 1   # unequal same/different mixes
    result = kfold_accuracy(left, right, same, n_folds=n_folds)
    assert_matches(result, reference_sphereface(left, right, same, n_folds), n_folds)


def test_sphereface_mean_subtraction_matters():
    """A large common offset squeezes every uncentred cosine towards 1, below the grid's resolution."""
    rng = np.random.default_rng(3)
    same = lfw_like_labels(10, 15)
    left, right = pair_features(same, 24, rng, noise=0.8, offset=1000 * rng.normal(size=24))
    result = kfold_accuracy(left, right, same, n_folds=10)
    assert_matches(result, reference_sphereface(left, right, same, 10), 10)
    uncentred, _ = reference_sphereface(left, right, same, 10, center="none")
    assert result.accuracy_mean > np.mean(uncentred) + 0.1


def test_sphereface_mean_is_one_mean_of_both_sides_over_the_other_folds():
    """Fold-specific offsets and a left/right offset: the global mean or separate side means would
    choose other thresholds, so matching the reference pins exactly which mean is used."""
    rng = np.random.default_rng(4)
    n_folds, per_side, dim = 6, 10, 10
    same = lfw_like_labels(n_folds, per_side)
    left, right = pair_features(same, dim, rng, noise=0.9)
    fold = np.array(reference_folds(len(same), n_folds))
    fold_offset = 3 * rng.normal(size=(n_folds, dim))[fold]
    side_offset = 2 * rng.normal(size=dim)
    left, right = left + fold_offset + side_offset, right + fold_offset - side_offset
    result = kfold_accuracy(left, right, same, n_folds=n_folds)
    assert_matches(result, reference_sphereface(left, right, same, n_folds), n_folds)
    for variant in ("all", "per_side"):
        _, other_thresholds = reference_sphereface(left, right, same, n_folds, center=variant)
        assert np.max(np.abs(np.subtract(other_thresholds, result.thresholds))) > 1e-3, variant


def test_sphereface_threshold_search_with_scores_on_grid_values():
    """Scores exactly equal to grid values: `score > t` / `score < t` are strict, many ties."""
    rng = np.random.default_rng(5)
    for _ in range(3):
        scores = rng.integers(-40, 41, size=60) * 250 / 10000     # multiples of 0.025, all on the grid
        same = rng.random(60) < 0.5
        scores[same] += 0.05                                     # some signal, still on the grid
        scores = np.round(scores * 10000) / 10000
        assert sphereface_threshold(scores, same) == pytest.approx(reference_sphereface_threshold(scores, same),
                                                                   abs=1e-12)


def test_invalid_pairs_count_as_wrong_and_keep_the_folds():
    rng = np.random.default_rng(6)
    same = lfw_like_labels(5, 10)
    left, right = pair_features(same, 8, rng, noise=0.6)
    invalid = np.zeros(len(same), bool)
    invalid[[3, 14, 15, 61]] = True
    left[invalid] = 0.0                        # what evaluate.py stores for a pair with a missing image
    right[invalid] = 0.0
    result = kfold_accuracy(left, right, same, n_folds=5, invalid=invalid)
    assert_matches(result, reference_sphereface(left, right, same, 5, invalid=invalid), 5)
    assert result.fold_accuracies[0] <= 1 - 3 / 20     # fold 1 holds three invalid pairs


# ---------------------------------------------------------------- insightface protocol

def test_insightface_matches_reference():
    rng = np.random.default_rng(7)
    same = rng.random(230) < 0.5
    left, right = pair_features(same, 16, rng, noise=1.0)
    result = kfold_accuracy(left, right, same, protocol="insightface", n_folds=10)
    assert result.protocol == "insightface"
    assert_matches(result, reference_insightface(left, right, same, 10), 10)
    assert 0.6 < result.accuracy_mean < 1.0


def test_insightface_takes_the_first_best_threshold():
    result, left, right, same = checked_kfold("insightface", seed=8, n_folds=10, per_side=10, dim=64, noise=0.1)
    fold = np.array(reference_folds(len(same), 10))
    dist = np.array([np.sum((unit(a) - unit(b)) ** 2) for a, b in zip(left, right)])
    for k, t in enumerate(result.thresholds):
        train = fold != k
        first = GRID_INSIGHTFACE[np.flatnonzero(GRID_INSIGHTFACE > dist[train & same].max())[0]]
        assert first < dist[train & ~same].min() - 0.5     # a wide tie: the first value is far from the last
        assert t == first


def test_insightface_threshold_with_distances_on_grid_values():
    rng = np.random.default_rng(9)
    distance = GRID_INSIGHTFACE[rng.integers(0, 400, size=80)]
    same = rng.random(80) < 0.5
    expected_acc = [np.mean(np.less(distance, t) == same) for t in GRID_INSIGHTFACE]
    assert insightface_threshold(distance, same) == GRID_INSIGHTFACE[int(np.argmax(expected_acc))]


# ---------------------------------------------------------------- result object, inputs, errors

def test_result_access_and_json():
    rng = np.random.default_rng(10)
    same = lfw_like_labels(4, 8)
    left, right = pair_features(same, 6, rng)
    result = kfold_accuracy(left, right, same, n_folds=4)
    for key in ("fold_accuracies", "thresholds", "accuracy_mean", "accuracy_std", "protocol"):
        assert result[key] == getattr(result, key)
    with pytest.raises(KeyError, match="nope"):
        result["nope"]
    acc = result.fold_accuracies
    mean = sum(acc) / len(acc)
    assert result.accuracy_mean == pytest.approx(mean, abs=1e-15)
    assert result.accuracy_std == pytest.approx((sum((a - mean) ** 2 for a in acc) / len(acc)) ** 0.5, abs=1e-15)
    loaded = json.loads(json.dumps(result.to_dict()))
    assert loaded["fold_accuracies"] == acc and loaded["protocol"] == "sphereface"
    assert dict(result) == result.to_dict()


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(11)
    same = lfw_like_labels(4, 10)
    left, right = pair_features(same, 8, rng)
    left, right = left.astype(np.float32), right.astype(np.float32)
    for protocol in ("sphereface", "insightface"):
        from_numpy = kfold_accuracy(left, right, same, protocol=protocol, n_folds=4)
        from_torch = kfold_accuracy(torch.from_numpy(left), torch.from_numpy(right), torch.from_numpy(same),
                                    protocol=protocol, n_folds=4)
        flags = np.where(same, 1, -1)            # evaluation.m's flags
        from_flags = kfold_accuracy(left, right, flags, protocol=protocol, n_folds=4)
        assert from_numpy.to_dict() == from_torch.to_dict() == from_flags.to_dict()


@pytest.mark.parametrize("change, message", [
    (dict(feat_right=np.zeros((9, 4))), "same number of pairs"),
    (dict(is_same=np.ones(11, bool)), "same number of pairs"),
    (dict(feat_left=np.zeros(10)), "2-d"),
    (dict(protocol="lfw"), "unknown protocol"),
    (dict(n_folds=1), "n_folds"),
    (dict(n_folds=11), "n_folds"),
    (dict(is_same=np.full(10, 2)), "is_same"),
    (dict(invalid=np.zeros(3, bool)), "invalid"),
])
def test_bad_input_fails_clearly(change, message):
    args = dict(feat_left=np.zeros((10, 4)), feat_right=np.zeros((10, 4)), is_same=np.ones(10, bool))
    args.update(change)
    with pytest.raises(ValueError, match=message):
        kfold_accuracy(**args)


# ---------------------------------------------------------------- helpers

def test_combine_flip():
    rng = np.random.default_rng(12)
    f, f_flip = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    np.testing.assert_array_equal(combine_flip(f, f_flip, "sphereface"), np.hstack([f, f_flip]))
    combined = combine_flip(torch.from_numpy(f), torch.from_numpy(f_flip), "insightface")
    for i in range(5):
        s = f[i] + f_flip[i]
        np.testing.assert_allclose(combined[i], s / np.sqrt(np.sum(s * s)), rtol=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        combine_flip(f, f_flip[:4])


def test_pair_scores():
    rng = np.random.default_rng(13)
    left, right = rng.normal(size=(7, 4)) + 2, rng.normal(size=(7, 4)) + 2
    mu = np.concatenate([left, right]).mean(0)
    expected = [np.sum(unit(a - mu) * unit(b - mu)) for a, b in zip(left, right)]
    np.testing.assert_allclose(pair_scores(left, right, "sphereface"), expected, rtol=1e-12)
    expected = [-np.sum((unit(a) - unit(b)) ** 2) for a, b in zip(left, right)]
    np.testing.assert_allclose(pair_scores(left, right, "insightface"), expected, rtol=1e-12)


def test_roc_metrics_exact_small_case():
    # accept when score >= t: at t = 0.6, TAR = 3/4 and FAR = 1/4, so FRR = FAR = 1/4
    scores = np.array([0.2, 0.6, 0.7, 0.9, 0.1, 0.3, 0.4, 0.8])
    same = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    metrics = roc_metrics(scores, same)
    assert metrics["eer"] == pytest.approx(0.25, abs=1e-12)
    # Mann-Whitney: fraction of (same, different) pairs ordered correctly = 11 / 16
    assert metrics["auc"] == pytest.approx(11 / 16, abs=1e-12)
    assert metrics["tar_at_far_1e-3"] == metrics["tar_at_far_1e-2"] == 0.25   # 0.9 alone, before 0.8


def test_roc_metrics_against_brute_force():
    rng = np.random.default_rng(14)
    pos = np.round(rng.normal(2.5, 1.0, 1500), 2)     # rounding makes ties
    neg = np.round(rng.normal(0.0, 1.0, 3000), 2)
    scores, same = np.r_[pos, neg], np.r_[np.ones(1500, bool), np.zeros(3000, bool)]
    metrics = roc_metrics(scores, same)
    for far in (1e-3, 1e-2):
        best = max([0.0] + [np.mean(pos >= t) for t in np.unique(scores) if np.mean(neg >= t) <= far])
        assert metrics[f"tar_at_far_{far:.0e}".replace("e-0", "e-")] == pytest.approx(best, abs=1e-12)
    greater = sum(np.count_nonzero(p > neg) + 0.5 * np.count_nonzero(p == neg) for p in pos)
    assert metrics["auc"] == pytest.approx(greater / (1500 * 3000), abs=1e-12)
    # Gaussians one unit either side of 1.25: EER = Phi(-1.25) = 0.1056
    assert metrics["eer"] == pytest.approx(0.1056, abs=0.015)
    with pytest.raises(ValueError, match="both"):
        roc_metrics(pos, np.ones(1500, bool))


def test_save_roc_png_is_atomic(tmp_path):
    from PIL import Image

    fpr, tpr = roc_points(np.array([0.9, 0.1, 0.8, 0.3]), np.array([1, 0, 1, 0], bool))
    path = tmp_path / "roc" / "lfw_roc.png"
    path.parent.mkdir()
    path.write_bytes(b"old")
    save_roc_png(fpr, tpr, path, label="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.size == (500, 500)
    assert [p.name for p in path.parent.iterdir()] == ["lfw_roc.png"]


def test_figure_png_bytes_encodes_at_the_figures_or_the_given_dpi():
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    figure = Figure(figsize=(2, 1), dpi=100)
    FigureCanvasAgg(figure)
    figure.add_subplot().plot([0, 1], [0, 1])
    own = figure_png_bytes(figure)
    assert own[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(own)) as image:
        assert image.size == (200, 100)
    with Image.open(io.BytesIO(figure_png_bytes(figure, dpi=50))) as image:   # the figure stays usable
        assert image.size == (100, 50)


def test_check_protocol_names_the_protocols():
    check_protocol("sphereface")
    check_protocol("insightface")
    with pytest.raises(ValueError, match="unknown protocol 'plain'; expected one of sphereface, insightface"):
        check_protocol("plain")


@pytest.mark.parametrize("module", ["eval.protocols", "eval.pairs", "eval.binfile"])
def test_protocol_and_file_format_modules_import_no_torch(module):
    """The LFW protocol and the pairs.txt / .bin readers are usable (and fast to import) without torch."""
    code = f"import sys; import uniformface.{module}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(CODE)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False", f"importing uniformface.{module} imports torch"
