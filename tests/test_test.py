"""test.py end to end: the results file beside the model (accuracy per fold, ROC metrics and figure, the
rule verify.py applies, the class-center spread), missing images, insightface .bin sets printed a row each
beside the kept LFW results, and hostile inputs (docs/RELIABILITY.md) ending in one line.
The evaluation itself is tested against direct computations in test_evaluate.py."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import hostile
from conftest import load_script, write_bin
from test_evaluate import direct_feature, face_like_images, saved_model
from uniformface.eval.pairs import read_pairs


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


# ------------------------------------------------------------------ hostile inputs (docs/RELIABILITY.md)

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


# -------------------------------------------------- YouTube Faces and IJB (test.py --benchmark ytf|ijbb|ijbc)

def model_feature(model, pixels):
    """[f; f_flip] of a crop straight through the network (float32 out, then float64), no DataLoader."""
    return np.concatenate(direct_feature(model, pixels))


@pytest.mark.slow
def test_ytf_end_to_end_beside_the_lfw_results(tmp_path, lfw_tree, capsys):
    from test_ytf import pair_rows, reference, write_splits, write_ytf

    root, pairs_path = lfw_tree
    model, model_path = saved_model(tmp_path)
    script = load_script("test")
    base = ["--model_path", str(model_path), "--no_progress", "--workers", "0"]
    assert script.main(base + ["--dataset", str(root), "--pairs_path", str(pairs_path)]) == 0
    pixels = write_ytf(tmp_path / "frames")
    rows = pair_rows()
    splits = write_splits(tmp_path / "splits.txt", rows)
    ytf = base + ["--benchmark", "ytf", "--dataset", str(tmp_path / "frames"), "--pairs_path", str(splits)]
    capsys.readouterr()
    assert script.main(ytf) == 0
    out = capsys.readouterr().out
    assert "|    Avg. |" in out and "YouTube Faces accuracy (sphereface protocol)" in out and "reused: none" in out
    results = json.loads((model_path.parent / "lfw_results.json").read_text())
    assert "verify_rule" in results and len(results["fold_accuracies"]) == 2   # the LFW results kept
    section = results["ytf"]
    accuracies, _ = reference(pixels, rows, None, feature=lambda image: model_feature(model, image))
    np.testing.assert_array_equal(section["fold_accuracies"], accuracies)
    assert section["n_pairs"] == 16 and section["evaluated"] == "sphereface4_32" and section["pairs_path"] == str(splits)
    assert (model_path.parent / "ytf_roc.png").is_file() and section["roc_png"] == str(model_path.parent / "ytf_roc.png")
    assert section["features"] == str(model_path.parent / "ytf_features.npy")
    assert script.main(ytf) == 0 and "reused: all" in capsys.readouterr().out
    from test_evaluate import SPEC_112x96
    from uniformface.train.checkpoint import export_weights
    from uniformface.nn.models import build_model

    torch.manual_seed(1)                                  # retrained: the same file name, other weights
    export_weights(model_path, build_model("sphereface4", 32).eval(), SPEC_112x96)
    assert script.main(ytf + ["--frames_per_video", "2"]) == 0
    out = capsys.readouterr().out
    assert "reused: none" in out and "at most 2 frames per video" in out
    assert json.loads((model_path.parent / "lfw_results.json").read_text())["ytf"]["frames_per_video"] == 2


def test_ytf_video_without_frames_is_a_one_line_error_unless_allowed(tmp_path, capsys):
    from test_ytf import pair_rows, write_splits, write_ytf

    _, model_path = saved_model(tmp_path)
    write_ytf(tmp_path / "frames")
    for frame in (tmp_path / "frames" / "Person_2" / "1").iterdir():
        frame.unlink()
    splits = write_splits(tmp_path / "splits.txt", pair_rows())
    args = ["--model_path", str(model_path), "--no_progress", "--workers", "0", "--benchmark", "ytf", "--dataset",
            str(tmp_path / "frames"), "--pairs_path", str(splits)]
    assert load_script("test").main(args) == 1
    hostile.one_line_error(capsys.readouterr().err, "1 video(s)", "Person_2/1", "--allow_missing")
    assert load_script("test").main(args + ["--allow_missing"]) == 0
    assert "had a video without frames and were counted as wrong" in capsys.readouterr().out


@pytest.mark.slow
def test_ijbc_end_to_end_with_and_without_detector_scores(tmp_path, capsys):
    from test_ijb import check_against_reference, insightface_tar_at_far, reference, write_ijb
    from uniformface.eval.ijb import FAR_TARGETS, far_key

    model, model_path = saved_model(tmp_path)
    crops, meta, known = write_ijb(tmp_path / "IJBC")
    args = ["--model_path", str(model_path), "--no_progress", "--workers", "0", "--benchmark", "ijbc", "--dataset",
            str(crops), "--meta", str(meta)]
    script = load_script("test")
    assert script.main(args) == 0
    out = capsys.readouterr().out
    assert "IJB-C 1:1 verification: TAR (%) at FAR, 21 template pairs, 7 templates, 16 images (unweighted" in out
    assert "|  1e-06 |  1e-05 |" in out and "reused: none" in out
    results = json.loads((model_path.parent / "lfw_results.json").read_text())
    assert set(results) == {"ijbc"}                          # a results file of test.py with one section
    section = results["ijbc"]

    def feature(patch):
        both = model_feature(model, patch)
        return both[:32] + both[32:]

    check_against_reference(section, *reference(known, None, feature=feature))
    assert section["detector_score_weighting"] is False and section["meta"] == str(meta)
    assert section["tar_rule"] == "at_most" and "TAR rule: at_most (the best TAR with FAR <= target)" in out
    with Image.open(model_path.parent / "ijbc_roc.png") as image:
        assert image.format == "PNG" and len(np.unique(np.asarray(image.convert("L")))) > 10
    assert script.main(args + ["--detector_score"]) == 0
    out = capsys.readouterr().out
    assert "detector-score weighted" in out and "reused: all" in out
    section = json.loads((model_path.parent / "lfw_results.json").read_text())["ijbc"]
    check_against_reference(section, *reference(known, None, weighted=True, feature=feature))
    # insightface's table: its rule and its detector-score weighting (D1), both named in the results
    assert script.main(args + ["--detector_score", "--tar_rule", "insightface"]) == 0
    out = capsys.readouterr().out
    assert "TAR rule: insightface (insightface's rule: the kept ROC point nearest the target)" in out
    assert "reused: all" in out
    section = json.loads((model_path.parent / "lfw_results.json").read_text())["ijbc"]
    assert section["tar_rule"] == "insightface" and section["detector_score_weighting"] is True
    expected = insightface_tar_at_far(*reference(known, None, weighted=True, feature=feature))
    assert {far: section[far_key(far)] for far in FAR_TARGETS} == expected
    (meta / "ijbc_template_pair_label.txt").write_text("1 2 1\n1 3 x\n")
    assert script.main(args) == 1
    hostile.one_line_error(capsys.readouterr().err, "ijbc_template_pair_label.txt:2:", "label 'x'")


@pytest.mark.parametrize("extra, message", [
    (["--benchmark", "ytf", "--dataset", "d"], "--benchmark ytf needs --dataset"),
    (["--benchmark", "ijbb", "--dataset", "d"], "--benchmark ijbb needs --dataset"),
    (["--meta", "m"], "--meta does not apply to --benchmark lfw"),
    (["--benchmark", "ijbc", "--meta", "m", "--dataset", "d", "--protocol", "insightface"],
     "--protocol does not apply to --benchmark ijbc"),
    (["--benchmark", "ytf", "--bin", "a.bin", "--dataset", "d", "--pairs_path", "p"],
     "--bin does not apply to --benchmark ytf"),
    (["--benchmark", "ytf", "--dataset", "d", "--pairs_path", "p", "--frames_per_video", "0"],
     "--frames_per_video must be a positive number"),
    (["--frames_per_video", "3"], "--frames_per_video does not apply to --benchmark lfw"),
    (["--tar_rule", "insightface"], "--tar_rule does not apply to --benchmark lfw"),
    (["--benchmark", "ijbc", "--meta", "m", "--dataset", "d", "--tar_rule", "nearest"],
     "argument --tar_rule: invalid choice: 'nearest'"),
])
def test_benchmark_options_are_checked_before_anything_runs(tmp_path, capsys, extra, message):
    _, model_path = saved_model(tmp_path)
    assert load_script("test").main(["--model_path", str(model_path)] + extra) == 2
    assert message in capsys.readouterr().err
