"""Evaluation front end: features through the DataLoader equal a direct computation;
test.py's results file (ROC metrics, ROC figure, the rule verify.py applies, class-center spread);
missing images; insightface .bin sets with the 112x112 -> 112x96 crop."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hostile
from uniformface.binfile import write_bin
from uniformface.checkpoint import export_weights
from uniformface.evaluate import bin_embeddings, evaluate_bin, evaluate_pairs
from uniformface.models import build_model
from uniformface.pairs import read_pairs

ROOT = Path(__file__).resolve().parents[1]
SHARED_BIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "insightface" / "small_lfw.bin"
SPEC_112x96 = {"model_name": "sphereface4", "emb_dim": 32, "input_size": [112, 96]}


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "code" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_cli_writes_results_roc_and_center_distance_beside_model(tmp_path, lfw_tree, capsys):
    root, pairs_path = lfw_tree
    _, model_path = saved_model(tmp_path)
    code = load_script("test").main(["--model_path", str(model_path), "--dataset", str(root), "--pairs_path",
                                     str(pairs_path), "--no_progress", "--workers", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "|    Avg. |" in out and "LFW accuracy" in out
    result = json.loads((model_path.parent / "lfw_results.json").read_text())
    for key in ("accuracy_mean", "accuracy_std", "fold_accuracies", "thresholds", "protocol", "auc", "eer",
                "tar_at_far_1e-3", "tar_at_far_1e-2", "verify_rule"):
        assert key in result, key
    assert len(result["fold_accuracies"]) == 2 and all(0 <= a <= 1 for a in result["fold_accuracies"])
    assert np.isclose(result["accuracy_mean"], np.mean(result["fold_accuracies"]))
    # initialised centers (0,0) (3,4) (6,8): nearest distances 5, 5, 5; the uninitialised (50,50) is left out
    assert np.isclose(result["mean_min_center_distance"], 5.0) and result["centers_from"] == "feature centers"
    assert "5.0000" in out
    roc = model_path.parent / "lfw_roc.png"
    assert result["roc_png"] == str(roc)
    with Image.open(roc) as image:
        assert image.format == "PNG" and image.size == (500, 500)
        assert len(np.unique(np.asarray(image.convert("L")))) > 10   # a drawn figure, not a blank canvas


def test_missing_image_is_an_error_unless_allowed(tmp_path, lfw_tree, capsys):
    root, pairs_path = lfw_tree
    _, model_path = saved_model(tmp_path)
    test_script = load_script("test")
    pairs = read_pairs(pairs_path)
    victim = pairs[0].left
    (root / victim).unlink()
    common = ["--model_path", str(model_path), "--dataset", str(root), "--pairs_path", str(pairs_path),
              "--no_progress", "--workers", "0"]
    assert test_script.main(common) == 1
    err = capsys.readouterr().err
    assert victim in err and "--allow_missing" in err
    assert test_script.main(common + ["--allow_missing", "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    affected = sum(victim in (p.left, p.right) for p in pairs)
    assert result["n_missing_pairs"] == affected and len(result["fold_accuracies"]) == 2
    assert "counted as wrong" in capsys.readouterr().out
    assert (tmp_path / "r_roc.png").is_file()


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


def test_cli_bin_prints_a_row_per_set_and_keeps_the_lfw_results(tmp_path, lfw_tree, capsys):
    _, model_path = saved_model(tmp_path)
    results = model_path.parent / "lfw_results.json"
    results.write_text(json.dumps({"accuracy_mean": 0.9, "fold_accuracies": [0.9], "protocol": "sphereface"}))
    paths = []
    for name, seed in (("lfw", 1), ("cfp_fp", 2)):
        paths.append(tmp_path / f"{name}.bin")
        write_bin(paths[-1], face_like_images(40, seed=seed), [True, False] * 10)
    code = load_script("test").main(["--model_path", str(model_path), "--bin", *map(str, paths), "--no_progress",
                                     "--workers", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "centre-cropped" in out and "+8 in x" in out
    rows = [line for line in out.splitlines() if line.startswith("| lfw ") or line.startswith("| cfp_fp ")]
    assert len(rows) == 2
    saved = json.loads(results.read_text())
    assert saved["accuracy_mean"] == 0.9                                   # the LFW run's results stay
    assert set(saved["bin"]) == {"lfw", "cfp_fp"} and len(saved["bin"]["lfw"]["fold_accuracies"]) == 10
    for row, name in zip(rows, ("lfw", "cfp_fp")):
        assert float(row.split("|")[3]) == pytest.approx(100 * saved["bin"][name]["accuracy_mean"], abs=5e-4)


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


# ------------------------------------------------------------------ hostile inputs (README, "Security and reliability")

def one_line_error(capsys, *words):
    return hostile.one_line_error(capsys.readouterr().err, *words)


def test_broken_config_refused_bin_and_devices_are_one_line_errors(tmp_path, lfw_tree, capsys):
    root, pairs_path = lfw_tree
    _, model_path = saved_model(tmp_path)
    test_script = load_script("test")
    config = model_path.parent / "config.yaml"
    config.write_text("model_name: sphereface4\ndataset: {test: [unclosed\n")
    assert test_script.main(["--model_path", str(model_path), "--no_progress"]) == 1
    one_line_error(capsys, f"{config}:", "not valid YAML", "--dataset and --pairs_path")
    config.write_text("- a list\n- not a mapping\n")
    assert test_script.main(["--model_path", str(model_path), "--no_progress"]) == 1
    one_line_error(capsys, str(config), "expected a mapping")
    # --dataset and --pairs_path leave nothing to read from it
    explicit = ["--model_path", str(model_path), "--dataset", str(root), "--pairs_path", str(pairs_path),
                "--no_progress", "--workers", "0"]
    assert test_script.main(explicit + ["--json", str(tmp_path / "r.json")]) == 0
    capsys.readouterr()

    evil = tmp_path / "evil.bin"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    assert test_script.main(["--model_path", str(model_path), "--bin", str(evil), "--no_progress"]) == 1
    one_line_error(capsys, str(evil), "refused to unpickle global 'os.system'")
    assert not (tmp_path / "pwned").exists()

    assert test_script.main(explicit + ["--device", "tpu:0"]) == 1
    one_line_error(capsys, "--device 'tpu:0'", "use cpu")
    if not torch.cuda.is_available():
        assert test_script.main(explicit + ["--device", "cuda"]) == 1
        one_line_error(capsys, "--device cuda", "--device cpu")


def test_results_file_test_py_did_not_write_is_kept(tmp_path, lfw_tree, capsys):
    """--json onto someone else's file replaced it (a broken JSON with a mere warning)."""
    from hostile import read_only_folder

    root, pairs_path = lfw_tree
    _, model_path = saved_model(tmp_path)
    test_script = load_script("test")
    common = ["--model_path", str(model_path), "--dataset", str(root), "--pairs_path", str(pairs_path),
              "--no_progress", "--workers", "0"]
    for content in ('{"name": "a notebook\'s settings"}', "not json at all", "[1, 2]"):
        foreign = tmp_path / "settings.json"
        foreign.write_text(content)
        assert test_script.main(common + ["--json", str(foreign)]) == 1
        one_line_error(capsys, f"{foreign} exists and is not a results file of test.py", "--overwrite")
        assert foreign.read_text() == content and not (tmp_path / "settings_roc.png").exists()
    (tmp_path / "r_roc.png").write_bytes(b"someone's figure")  # a figure with no results file of ours beside it
    assert test_script.main(common + ["--json", str(tmp_path / "r.json")]) == 1
    one_line_error(capsys, "r_roc.png exists", "--overwrite")
    assert (tmp_path / "r_roc.png").read_bytes() == b"someone's figure" and not (tmp_path / "r.json").exists()
    assert test_script.main(common + ["--json", str(foreign), "--overwrite"]) == 0
    assert "accuracy_mean" in json.loads(foreign.read_text())
    assert test_script.main(common + ["--json", str(foreign)]) == 0     # now ours: updated in place
    capsys.readouterr()
    with read_only_folder(tmp_path / "ro") as ro:
        assert test_script.main(common + ["--json", str(ro / "r.json")]) == 1
    one_line_error(capsys, str(ro / "r.json"), "permissions")


def test_weights_that_are_not_weights(tmp_path, lfw_tree, capsys):
    root, pairs_path = lfw_tree
    _, model_path = saved_model(tmp_path)
    test_script = load_script("test")
    jpeg = tmp_path / "photo.pt"
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(jpeg, format="JPEG")
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(model_path.read_bytes()[:4000])
    payload = torch.load(model_path, weights_only=True)
    payload["spec"]["input_size"] = [112, 112]
    torch.save(payload, tmp_path / "wide.pt")
    common = ["--dataset", str(root), "--pairs_path", str(pairs_path), "--no_progress", "--workers", "0",
              "--json", str(tmp_path / "r.json")]
    for path, words in ((jpeg, ["not a weights file"]), (truncated, ["not a weights file"]),
                        (tmp_path / "wide.pt", ["do not fit the spec", "input 112x112", "fc5.weight"])):
        # --baseline untrained reads only the spec: a file that is not weights fails there too
        for baseline in ([], ["--baseline", "untrained"]) if path != tmp_path / "wide.pt" else ([],):
            assert test_script.main(["--model_path", str(path), *common, *baseline]) == 1
            err = one_line_error(capsys, str(path), *words)
            assert "weights_only=False" not in err
