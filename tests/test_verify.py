"""verify.py: two real photos (scikit-image's astronaut, and a turned, shifted, rescaled
copy of it) are aligned with the project's aligner, embedded with the flip, and compared with the rule of
the model's LFW run or --threshold; a photo without a face is an error naming it."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from conftest import load_script
from hostile import one_line_error
from uniformface.align.face import FaceDetector, align_face
from uniformface.train.checkpoint import export_weights
from uniformface.nn.models import build_model

ROOT = Path(__file__).resolve().parents[1]
FACE_CENTRE = (226, 122)  # the astronaut's face in data.astronaut(), (x, y)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    photo = Image.fromarray(data.astronaut())
    photo.save(folder / "astronaut.jpg", quality=92)
    turned = photo.rotate(12, center=FACE_CENTRE, resample=Image.Resampling.BICUBIC)
    turned.crop((60, -20, 420, 340)).resize((300, 300), Image.Resampling.BICUBIC).save(folder / "same.jpg", quality=92)
    yy, xx = np.mgrid[0:200, 0:240]
    Image.fromarray(np.stack([xx, yy, (xx + yy) // 2], -1).astype(np.uint8)).save(folder / "wall.jpg")
    return folder


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("sphereface4", 32).eval()
    path = tmp_path_factory.mktemp("run") / "sphereface4_32.pt"
    export_weights(path, model, {"model_name": "sphereface4", "emb_dim": 32, "input_size": [112, 96]})
    return path


@pytest.fixture(scope="module")
def reference_features(photos, model_path):
    """Independent path: the aligner called directly, numpy normalisation, [f, f_flip] in float64."""
    torch.manual_seed(0)
    model = build_model("sphereface4", 32).eval()
    model.load_state_dict(torch.load(model_path, weights_only=True)["model"])
    detector = FaceDetector()
    features = []
    for name in ("astronaut.jpg", "same.jpg"):
        pixels = np.asarray(Image.open(photos / name).convert("RGB"))
        face = align_face(pixels, detector.detect(pixels), (112, 96))
        x = torch.from_numpy((face.astype(np.float32) - 127.5) / 128).permute(2, 0, 1)[None]
        with torch.no_grad():
            features.append(np.concatenate([model(x)[0].double().numpy(), model(x.flip(-1))[0].double().numpy()]))
    return features


def cosine(a, b):
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def write_rule(path, feature_mean, threshold):
    path.write_text(json.dumps({"protocol": "sphereface", "accuracy_mean": 0.9, "thresholds": [0.3, 0.4],
                                "verify_rule": {"protocol": "sphereface", "feature_mean": list(feature_mean),
                                                "cosine_threshold": threshold, "fitted_on_pairs": 6000}}))


def verify_main(args):
    return load_script("verify").main(args)


def printed_cosine(out):
    return float(out.split("cosine ")[1].split()[0])


@pytest.mark.slow
def test_same_photo_rule_from_the_lfw_run(photos, model_path, reference_features, tmp_path):
    """The stored LFW feature mean is subtracted before the cosine; the stored threshold decides."""
    a, b = reference_features
    mean = 0.5 * a + np.random.default_rng(0).normal(0, 0.01, 64)   # large enough to move the cosine
    expected = cosine(a - mean, b - mean)
    assert abs(expected - cosine(a, b)) > 0.01
    results = model_path.parent / "lfw_results.json"
    write_rule(results, mean, expected - 0.05)
    proc = subprocess.run([sys.executable, str(ROOT / "code/verify.py"), str(photos / "astronaut.jpg"),
                           str(photos / "same.jpg"), "--model_path", str(model_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert abs(printed_cosine(proc.stdout) - expected) < 2e-5
    assert "same person" in proc.stdout and "minus the LFW feature mean" in proc.stdout
    assert f"{expected - 0.05:.6f}" in proc.stdout and str(results) in proc.stdout
    results.unlink()


def test_threshold_option_decides_both_ways(photos, model_path, reference_features, capsys):
    """Without a results file the cosine is that of the plain [f, f_flip]; --threshold decides."""
    expected = cosine(*reference_features)
    assert expected > 0.9   # the two views of one face, aligned, are nearly the same image
    args = [str(photos / "astronaut.jpg"), str(photos / "same.jpg"), "--model_path", str(model_path), "--threshold"]
    assert verify_main(args + [str(expected - 1e-3)]) == 0
    out = capsys.readouterr().out
    assert abs(printed_cosine(out) - expected) < 2e-5 and "same person" in out and "--threshold" in out
    assert verify_main(args + [str(expected + 1e-3)]) == 0
    assert "different people" in capsys.readouterr().out


def test_stored_threshold_above_the_cosine_says_different(photos, model_path, reference_features, capsys):
    mean = np.zeros(64)
    results = model_path.parent / "lfw_results.json"
    write_rule(results, mean, cosine(*reference_features) + 1e-3)
    try:
        args = [str(photos / "same.jpg"), str(photos / "astronaut.jpg"), "--model_path", str(model_path)]
        assert verify_main(args) == 0
    finally:
        results.unlink()
    assert "different people" in capsys.readouterr().out


def test_a_threshold_that_is_not_finite_is_a_usage_error(photos, capsys):
    """`--threshold nan` would answer "different people" for every pair: refused before any work."""
    pair = [str(photos / "astronaut.jpg"), str(photos / "same.jpg")]
    for value in ("nan", "inf"):
        assert verify_main(pair + ["--model_path", "absent.pt", "--threshold", value]) == 2
        assert f"--threshold: expected a finite number, got {value}" in capsys.readouterr().err


def test_faceless_photo_and_missing_rule_are_clear_errors(photos, model_path, capsys):
    wall = str(photos / "wall.jpg")
    args = [str(photos / "astronaut.jpg"), wall, "--model_path", str(model_path), "--threshold", "0.3"]
    assert verify_main(args) == 1
    err = capsys.readouterr().err
    assert f"no face found in {wall}" in err and "astronaut.jpg" not in err
    assert verify_main([str(photos / "astronaut.jpg"), str(photos / "same.jpg"), "--model_path", str(model_path)]) == 1
    err = capsys.readouterr().err
    assert "lfw_results.json not found" in err and "test.py" in err and "--threshold" in err


def test_hostile_inputs_end_in_one_line(photos, model_path, tmp_path, capsys):
    """A JPEG renamed .pt (torch suggests weights_only=False), weights that do not fit
    their spec, an unknown or absent device, a results file that is JSON but not ours: one line, exit 1."""
    jpeg = tmp_path / "photo.pt"
    jpeg.write_bytes((photos / "astronaut.jpg").read_bytes())
    payload = torch.load(model_path, weights_only=True)
    del payload["model"]["fc5.weight"]
    torch.save(payload, tmp_path / "partial.pt")
    (tmp_path / "list.json").write_text("[0.3]")
    pair = [str(photos / "astronaut.jpg"), str(photos / "same.jpg")]
    cases = [(["--model_path", str(jpeg), "--threshold", "0.3"], [str(jpeg), "not a weights file"]),
             (["--model_path", str(tmp_path / "partial.pt"), "--threshold", "0.3"],
              ["partial.pt", "do not fit the spec", "fc5.weight"]),
             (["--model_path", str(model_path), "--threshold", "0.3", "--device", "cuda:x"], ["--device 'cuda:x'"]),
             (["--model_path", str(model_path), "--results", str(tmp_path / "list.json")],
              ["list.json", "not a results file"])]
    if not torch.cuda.is_available():
        cases.append((["--model_path", str(model_path), "--threshold", "0.3", "--device", "cuda"],
                      ["--device cuda: no CUDA GPU"]))
    for args, words in cases:
        assert verify_main(pair + args) == 1, args
        err = capsys.readouterr().err
        one_line_error(err, *words)
        assert "weights_only=False" not in err


def test_cheap_checks_come_before_the_weights_are_read(photos, tmp_path, monkeypatch, capsys):
    """The weights path does not exist and reading it is counted: a missing photo, a missing results file
    or one that is not test.py's is the error shown, and the weights were never read."""
    import uniformface.eval.trained_network as trained_network

    reads = []
    original = trained_network.load_backbone
    monkeypatch.setattr(trained_network, "load_backbone", lambda *args: reads.append(args) or original(*args))
    (tmp_path / "list.json").write_text("[0.3]")
    absent_model = str(tmp_path / "run" / "absent.pt")
    pair = [str(photos / "astronaut.jpg"), str(photos / "same.jpg")]
    cases = [([str(photos / "astronaut.jpg"), str(tmp_path / "gone.jpg"), "--threshold", "0.3"],
              ["photo not found", "gone.jpg"]),
             (pair, ["lfw_results.json not found", "--threshold"]),
             (pair + ["--results", str(tmp_path / "list.json")], ["list.json", "not a results file"])]
    for args, words in cases:
        assert verify_main(args + ["--model_path", absent_model]) == 1, args
        err = capsys.readouterr().err
        one_line_error(err, *words)
        assert "model file not found" not in err
    assert reads == []
    assert verify_main(pair + ["--model_path", absent_model, "--threshold", "0.3"]) == 1
    one_line_error(capsys.readouterr().err, "model file not found", "absent.pt")
    assert len(reads) == 1


def test_no_verdict_from_a_rule_or_weights_that_give_no_finite_cosine(photos, model_path, tmp_path, capsys):
    """A finite but huge feature_mean (1e308) in lfw_results.json made the cosine NaN, and a photo against
    itself was answered "different people" with exit 0; weights holding one NaN give NaN features, an
    error that named no file. Now: exit 1, one line naming the file to blame, nothing on stdout."""
    photo = str(photos / "astronaut.jpg")
    results = tmp_path / "huge.json"
    write_rule(results, [1e308] * 64, 0.3)
    assert verify_main([photo, photo, "--model_path", str(model_path), "--results", str(results)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    one_line_error(captured.err, f"verify.py: error: {results}: verify_rule's feature_mean is too large for a cosine")

    payload = torch.load(model_path, weights_only=True)
    payload["model"]["fc5.weight"][0, 0] = float("nan")
    broken = tmp_path / "run" / "sphereface4_32.pt"
    broken.parent.mkdir()
    torch.save(payload, broken)
    assert verify_main([photo, photo, "--model_path", str(broken), "--threshold", "0.3"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    one_line_error(captured.err, f"verify.py: error: {broken}: the network gave non-finite features")
