"""Evaluation front end: features through the DataLoader equal a direct computation, and so do the rule
verify.py applies and the ROC figures; insightface .bin sets with the 112x112 -> 112x96 crop. test.py's
own tests (its results file, missing images, hostile inputs) are in test_test.py."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_bin
from uniformface.train.checkpoint import export_weights
from uniformface.eval.evaluate import bin_embeddings, evaluate_bin, evaluate_pairs
from uniformface.nn.models import build_model
from uniformface.eval.pairs import read_pairs

SHARED_BIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "insightface" / "small_lfw.bin"
SPEC_112x96 = {"model_name": "sphereface4", "emb_dim": 32, "input_size": [112, 96]}


def saved_model(tmp_path, extra=None):
    torch.manual_seed(0)
    model = build_model("sphereface4", 32).eval()
    path = tmp_path / "run" / "sphereface4_32.pt"
    if extra is None:
        extra = {"centers": torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [50.0, 50.0]]),
                 "centers_initialized": torch.tensor([True, True, True, False])}
    export_weights(path, model, SPEC_112x96, extra)
    return model, path


def direct_feature(model, pixels):
    """Independent path: numpy normalisation of a uint8 (H, W, 3) array, no DataLoader; returns (f, f_flip)."""
    x = torch.from_numpy((np.asarray(pixels, np.float32) - 127.5) / 128).permute(2, 0, 1)[None]
    with torch.no_grad():
        return model(x)[0].double().numpy(), model(x.flip(-1))[0].double().numpy()


def lfw_features(model, root, pairs):
    def feature(rel):
        f, f_flip = direct_feature(model, np.asarray(Image.open(root / rel).convert("RGB")))
        return np.concatenate([f, f_flip])
    return np.stack([feature(p.left) for p in pairs]), np.stack([feature(p.right) for p in pairs])


def sphereface_reference_fold_accuracies(left, right, same, n_folds):
    """evaluation.m written out: per fold, mean of the other folds' left+right, cosine, all 20,001 thresholds."""
    grid = np.arange(-10000, 10001) / 10000
    folds = np.array_split(np.arange(len(same)), n_folds)
    accuracies = []
    for test in folds:
        train = np.setdiff1d(np.arange(len(same)), test)
        mu = np.concatenate([left[train], right[train]]).mean(0)
        a, b = left - mu, right - mu
        score = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
        correct = [np.sum(score[train][same[train]] > t) + np.sum(score[train][~same[train]] < t) for t in grid]
        t = grid[np.array(correct) == max(correct)].mean()
        accuracies.append((np.sum(score[test][same[test]] > t) + np.sum(score[test][~same[test]] < t)) / len(test))
    return accuracies


def test_evaluate_pairs_equals_direct_feature_computation(tmp_path, lfw_tree):
    root, pairs_path = lfw_tree
    model, _ = saved_model(tmp_path)
    result = evaluate_pairs(model, root, pairs_path, num_workers=0, progress=False)
    pairs = read_pairs(pairs_path)
    left, right = lfw_features(model, root, pairs)
    same = np.array([p.is_same for p in pairs])
    np.testing.assert_allclose(result["fold_accuracies"], sphereface_reference_fold_accuracies(left, right, same, 2))
    assert result["n_pairs"] == 12 and result["n_missing_pairs"] == 0

    # The verify rule: one mean over every left and right feature, evaluation.m's threshold rule on all pairs.
    mu = np.concatenate([left, right]).mean(0)
    a, b = left - mu, right - mu
    score = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    grid = np.arange(-10000, 10001) / 10000
    correct = (score[same][None, :] > grid[:, None]).sum(1) + (score[~same][None, :] < grid[:, None]).sum(1)
    rule = result["verify_rule"]
    assert rule["protocol"] == "sphereface" and rule["fitted_on_pairs"] == 12
    np.testing.assert_allclose(rule["feature_mean"], mu, rtol=1e-5, atol=1e-6)
    assert abs(rule["cosine_threshold"] - grid[correct == correct.max()].mean()) < 2e-4

    # ROC figures over all pairs, from the same scores: AUC as the Mann-Whitney probability, TAR at FAR
    # as the best accept rate of same pairs whose different-pair accept rate stays within the target.
    pos, neg = score[same], score[~same]
    auc = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert abs(result["auc"] - auc) < 1e-9
    for far in (1e-3, 1e-2):
        best = max([0.0] + [np.mean(pos >= t) for t in score if np.mean(neg >= t) <= far])
        assert abs(result[f"tar_at_far_{far:.0e}".replace("e-0", "e-")] - best) < 1e-12
    far_points = [np.mean(neg >= t) for t in np.sort(score)]
    frr_points = [1 - np.mean(pos >= t) for t in np.sort(score)]
    crossing = min(range(len(score)), key=lambda i: abs(far_points[i] - frr_points[i]))
    lo, hi = sorted((far_points[crossing], frr_points[crossing]))
    assert lo - 1 / len(neg) <= result["eer"] <= hi + 1 / len(neg)


def test_insightface_protocol_on_pairs_stores_its_rule_as_a_cosine(tmp_path, lfw_tree):
    root, pairs_path = lfw_tree
    model, _ = saved_model(tmp_path)
    result = evaluate_pairs(model, root, pairs_path, protocol="insightface", num_workers=0, progress=False)
    pairs = read_pairs(pairs_path)
    both_left, both_right = lfw_features(model, root, pairs)   # [f, f_flip] per image

    def unit_sum(both):  # insightface: normalise(f + f_flip)
        summed = both[:, :32] + both[:, 32:]
        return summed / np.linalg.norm(summed, axis=1, keepdims=True)

    distance = ((unit_sum(both_left) - unit_sum(both_right)) ** 2).sum(1)
    same = np.array([p.is_same for p in pairs])
    accuracy = [np.mean((distance < k * 0.01) == same) for k in range(400)]
    t = int(np.argmax(accuracy)) * 0.01
    rule = result["verify_rule"]
    assert rule["feature_mean"] is None and abs(rule["squared_distance_threshold"] - t) < 1e-9
    assert abs(rule["cosine_threshold"] - (1 - t / 2)) < 1e-9


# ------------------------------------------------------------------------------------------- .bin sets

def face_like_images(n, size=(112, 112), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[0], 0:size[1]] / size[0]
    images = []
    for k in range(n):
        person = k // 4  # pairs (0,1) (2,3) share a person
        freq = np.random.default_rng(100 + person).uniform(1, 5, size=(3, 2))
        base = np.stack([np.sin(2 * np.pi * (f[0] * yy + f[1] * xx)) for f in freq], -1)
        images.append(np.clip(127.5 + 90 * base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))
    return images


def insightface_reference(emb, issame, n_folds=10):
    """insightface calculate_roc written out: squared L2 of unit embeddings, 10 blocks, first best of 0..4/0.01."""
    left, right = emb[0::2], emb[1::2]
    distance = ((left - right) ** 2).sum(1)
    grid = [k * 0.01 for k in range(400)]
    accuracies = []
    for test in np.array_split(np.arange(len(issame)), n_folds):
        train = np.setdiff1d(np.arange(len(issame)), test)
        train_acc = [np.mean((distance[train] < t) == issame[train]) for t in grid]
        t = grid[int(np.argmax(train_acc))]
        accuracies.append(np.mean((distance[test] < t) == issame[test]))
    return accuracies


def bin_reference_embeddings(model, path):
    """Decode with PIL, drop 8 columns each side, f + f_flip, unit length."""
    import pickle
    with open(path, "rb") as handle:  # our own trusted file
        bins, _ = pickle.load(handle)
    out = []
    for data in bins:
        import io
        pixels = np.asarray(Image.open(io.BytesIO(bytes(np.asarray(data).tobytes()))).convert("RGB"))
        assert pixels.shape == (112, 112, 3)
        f, f_flip = direct_feature(model, pixels[:, 8:104])
        e = f + f_flip
        out.append(e / np.linalg.norm(e))
    return np.stack(out)


def test_bin_set_is_cropped_and_scored_with_the_insightface_protocol(tmp_path):
    model, _ = saved_model(tmp_path)
    issame = np.array([True, False] * 10)
    path = tmp_path / "mini.bin"
    write_bin(path, face_like_images(40), issame)
    embeddings, read_issame, crop = bin_embeddings(model, path, (112, 96), num_workers=0, progress=False)
    reference = bin_reference_embeddings(model, path)
    np.testing.assert_allclose(embeddings, reference, atol=1e-5)
    assert read_issame.tolist() == issame.tolist() and "columns 8..103" in crop
    result = evaluate_bin(model, path, (112, 96), num_workers=0, progress=False)
    np.testing.assert_allclose(result["fold_accuracies"], insightface_reference(reference, issame))
    assert result["n_pairs"] == 20 and len(result["thresholds"]) == 10 and 0 <= result["auc"] <= 1


def test_shared_small_lfw_bin(tmp_path):
    if not SHARED_BIN.is_file():
        pytest.skip(f"{SHARED_BIN} not present")
    model, _ = saved_model(tmp_path)
    result = evaluate_bin(model, SHARED_BIN, (112, 96), num_workers=0, progress=False)
    reference = bin_reference_embeddings(model, SHARED_BIN)
    import pickle
    with open(SHARED_BIN, "rb") as handle:
        issame = np.asarray(pickle.load(handle, encoding="bytes")[1], bool)
    assert result["n_pairs"] == len(issame) == 10 and "columns 8..103" in result["crop"]
    np.testing.assert_allclose(result["fold_accuracies"], insightface_reference(reference, issame))
    if issame.all() or not issame.any():  # the shared sample holds same pairs only: no ROC to draw
        assert result["auc"] is None and "only" in result["roc_note"]
