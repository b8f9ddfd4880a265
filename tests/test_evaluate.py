import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from uniformface.checkpoint import export_weights
from uniformface.evaluate import evaluate_pairs
from uniformface.models import build_model
from uniformface.pairs import read_pairs
from uniformface.verification import kfold_accuracy

ROOT = Path(__file__).resolve().parents[1]


def saved_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("sphereface4", 32).eval()
    path = tmp_path / "run" / "sphereface4_32.pt"
    export_weights(path, model, {"model_name": "sphereface4", "emb_dim": 32, "input_size": [112, 96]},
                   {"centers": torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]]),
                    "centers_initialized": torch.tensor([True, True, True])})
    return model, path


def test_evaluate_pairs_equals_direct_feature_computation(tmp_path, lfw_tree):
    root, pairs_path = lfw_tree
    model, _ = saved_model(tmp_path)
    result = evaluate_pairs(model, root, pairs_path, num_workers=0, progress=False)
    pairs = read_pairs(pairs_path)

    def feature(rel):  # independent path: PIL decode, numpy normalisation, no DataLoader
        pixels = np.asarray(Image.open(root / rel).convert("RGB"), dtype=np.float32)
        x = torch.from_numpy((pixels - 127.5) / 128).permute(2, 0, 1)[None]
        with torch.no_grad():
            return torch.cat([model(x), model(x.flip(-1))], 1)[0].numpy()

    left = np.stack([feature(p.left) for p in pairs])
    right = np.stack([feature(p.right) for p in pairs])
    direct = kfold_accuracy(left, right, np.array([p.is_same for p in pairs]), n_folds=2)
    np.testing.assert_allclose(result["fold_accuracies"], direct["fold_accuracies"])
    np.testing.assert_allclose(result["thresholds"], direct["thresholds"], atol=2e-4)
    assert result["n_pairs"] == 12 and result["n_missing_pairs"] == 0


def run_test_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "code/test.py"), "--no_progress", "--workers", "0", *args],
                          capture_output=True, text=True)


def test_cli_writes_results_beside_model_and_prints_table(tmp_path, lfw_tree):
    root, pairs_path = lfw_tree
    _, model_path = saved_model(tmp_path)
    proc = run_test_cli("--model_path", str(model_path), "--dataset", str(root), "--pairs_path", str(pairs_path))
    assert proc.returncode == 0, proc.stderr
    assert "|   Avg. |" in proc.stdout and "LFW accuracy" in proc.stdout
    result = json.loads((model_path.parent / "lfw_results.json").read_text())
    for key in ("accuracy_mean", "accuracy_std", "fold_accuracies", "thresholds", "protocol", "auc", "eer"):
        assert key in result, key
    assert len(result["fold_accuracies"]) == 2 and all(0 <= a <= 1 for a in result["fold_accuracies"])
    assert np.isclose(result["accuracy_mean"], np.mean(result["fold_accuracies"]))
    # centers (0,0) (3,4) (6,8): nearest distances 5, 5, 5
    assert np.isclose(result["mean_min_center_distance"], 5.0)


def test_missing_image_is_an_error_unless_allowed(tmp_path, lfw_tree):
    root, pairs_path = lfw_tree
    _, model_path = saved_model(tmp_path)
    pairs = read_pairs(pairs_path)
    victim = pairs[0].left
    (root / victim).unlink()
    proc = run_test_cli("--model_path", str(model_path), "--dataset", str(root), "--pairs_path", str(pairs_path))
    assert proc.returncode == 1 and victim in proc.stderr and "--allow_missing" in proc.stderr
    proc = run_test_cli("--model_path", str(model_path), "--dataset", str(root), "--pairs_path", str(pairs_path),
                        "--allow_missing", "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    affected = sum(victim in (p.left, p.right) for p in pairs)
    assert result["n_missing_pairs"] == affected and len(result["fold_accuracies"]) == 2
    assert "counted as wrong" in proc.stdout
