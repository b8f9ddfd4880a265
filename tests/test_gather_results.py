"""gather_results.py: several runs' lfw_results.json -> the earlier port's README tables."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from uniformface.report import gather_markdown, load_run, setting_names

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("script_gather_results", ROOT / "code" / "gather_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_run(folder, alpha, beta, correct_per_fold, center_distance=None, center_mode="feature", bins=None,
             beta_text=None):
    """A run folder as train.py + test.py leave it; folds of 600 pairs with the given numbers right."""
    folder.mkdir(parents=True)
    config = {"seed": 0, "model_name": "sphereface20", "alpha": alpha, "beta": beta, "center_mode": center_mode,
              "loss": {"name": "sphereface", "m": 4}}
    text = yaml.safe_dump(config, sort_keys=False)
    if beta_text is not None:  # as a user writes it: PyYAML alone would read 1e-3 as a string
        text = text.replace(f"beta: {beta}", f"beta: {beta_text}")
    (folder / "config.yaml").write_text(text)
    folds = [c / 600 for c in correct_per_fold]
    results = {"protocol": "sphereface", "fold_accuracies": folds, "accuracy_mean": sum(folds) / len(folds)}
    if center_distance is not None:
        results["mean_min_center_distance"] = center_distance
    if bins:
        results["bin"] = bins
    (folder / "lfw_results.json").write_text(json.dumps(results))
    return folder, folds


def table_rows(markdown, title):
    """{row name: [cells as floats]} of the table after the line starting with `title`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 2
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = [float(c) if c != "-" else None for c in cells[1:]]
    return rows


def test_tables_from_three_runs(tmp_path):
    plain, plain_folds = make_run(tmp_path / "a", 0.0, 0.0, [594, 594, 593, 590, 594, 594, 594, 592, 597, 594], 0.1516)
    moving, moving_folds = make_run(tmp_path / "b", 1.0, 0.001, [592, 590, 592, 588, 593, 592, 592, 593, 597, 595],
                                    14.1534, beta_text="1e-3")
    fixed, fixed_folds = make_run(tmp_path / "c", 1.0, 0.0, [590, 590, 592, 592, 591, 591, 592, 593, 598, 592])
    markdown = gather_markdown([load_run(plain), load_run(moving / "lfw_results.json"), load_run(fixed)])
    rows = table_rows(markdown, "- LFW accuracy")
    assert list(rows) == ["alpha=0.0/beta=0.0", "alpha=1.0/beta=0.001", "alpha=1.0/beta=0.0"]
    for name, folds in zip(rows, (plain_folds, moving_folds, fixed_folds)):
        average, *cells = rows[name]
        assert len(cells) == 10
        assert average == pytest.approx(100 * sum(folds) / 10, abs=5e-4)
        assert cells == pytest.approx([100 * f for f in folds], abs=5e-4)
    assert "(10-fold, sphereface protocol)" in markdown
    centers = table_rows(markdown, "- average of minimum class distance")
    assert centers == {"alpha=0.0/beta=0.0": [0.1516], "alpha=1.0/beta=0.001": [14.1534]}   # c reports none
    assert "insightface .bin" not in markdown


def test_runs_sharing_alpha_beta_are_told_apart(tmp_path):
    folds = [590] * 10
    runs = [load_run(make_run(tmp_path / name, 1.0, 0.5, folds, center_mode=mode)[0])
            for name, mode in (("f", "feature"), ("w", "weight"))]
    runs.append(load_run(make_run(tmp_path / "f_again", 1.0, 0.5, folds)[0]))
    assert setting_names(runs) == ["alpha=1.0/beta=0.5/center_mode=feature (f)",
                                   "alpha=1.0/beta=0.5/center_mode=weight",
                                   "alpha=1.0/beta=0.5/center_mode=feature (f_again)"]


def test_bin_sets_get_a_table(tmp_path):
    run, _ = make_run(tmp_path / "a", 1.0, 0.5, [590] * 10,
                      bins={"cfp_fp": {"accuracy_mean": 0.9123}, "lfw": {"accuracy_mean": 0.99}})
    other, _ = make_run(tmp_path / "b", 0.0, 0.0, [580] * 10, bins={"lfw": {"accuracy_mean": 0.985}})
    markdown = gather_markdown([load_run(run), load_run(other)], names=["uniform", "plain"])
    table = markdown[markdown.index("- insightface .bin"):]
    header = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    assert header == ["", "lfw", "cfp_fp"]                      # insightface's order, not alphabetical
    assert table_rows(markdown, "- insightface .bin") == {"uniform": [99.0, 91.23], "plain": [98.5, None]}


def test_cli_names_output_and_errors(tmp_path, capsys):
    a, _ = make_run(tmp_path / "a", 0.0, 0.0, [594] * 10, 0.15)
    b, _ = make_run(tmp_path / "b", 1.0, 0.001, [592] * 10, 14.2)
    output = tmp_path / "results.md"
    script = str(ROOT / "code" / "gather_results.py")
    proc = subprocess.run([sys.executable, script, str(a), str(b), "--names", "sphereface", "uniformface",
                           "--output", str(output)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert output.read_text() == proc.stdout
    assert set(table_rows(proc.stdout, "- LFW accuracy")) == {"sphereface", "uniformface"}
    gather = load_script()
    assert gather.main([str(a), str(tmp_path / "missing")]) == 1
    assert str(tmp_path / "missing" / "lfw_results.json") in capsys.readouterr().err
    assert gather.main([str(a), "--names", "x", "y"]) == 2
    assert "2 names for 1 runs" in capsys.readouterr().err


def test_damaged_results_name_the_file(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "lfw_results.json").write_text('{"accuracy_mean": 0.9,\n  "fold_accuracies": [0.9')
    with pytest.raises(ValueError, match=r"r/lfw_results.json:2: not valid JSON"):
        load_run(folder)
    (folder / "lfw_results.json").write_text('{"accuracy_mean": 0.9}')
    with pytest.raises(ValueError, match=r"needs both 'accuracy_mean' and 'fold_accuracies'"):
        gather_markdown([load_run(folder)])
    (folder / "lfw_results.json").write_text('{"protocol": "sphereface"}')
    with pytest.raises(ValueError, match=r"holds neither LFW results"):
        gather_markdown([load_run(folder)])


def test_an_existing_output_and_a_broken_config_are_one_line_errors(tmp_path, capsys):
    """--output used to replace any file there; a broken config.yaml beside the results was a traceback."""
    a, _ = make_run(tmp_path / "a", 0.0, 0.0, [594] * 10, 0.15)
    gather = load_script()
    notes = tmp_path / "notes.md"
    notes.write_text("my notes\n")
    assert gather.main([str(a), "--output", str(notes)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gather_results.py: error: ") and err.count("\n") == 1 and f"{notes} already exists" in err and "--overwrite" in err
    assert notes.read_text() == "my notes\n"
    assert gather.main([str(a), "--output", str(notes), "--overwrite"]) == 0
    assert "LFW accuracy" in notes.read_text()
    capsys.readouterr()
    config = tmp_path / "a" / "config.yaml"
    config.write_text("alpha: [1.0\n")
    assert gather.main([str(a)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"gather_results.py: error: {config}:") and "not valid YAML" in err and err.count("\n") == 1, err


def test_a_run_resumed_with_other_settings_is_reported_with_them_and_its_history(tmp_path, tree_factory, capsys):
    """train.py --resume --set lr=0.01 --set beta=0.25: gather_results reads the rewritten config.yaml
    (the row is named by the final beta) and lists the change with the iteration it took effect."""
    import train as train_cli

    tree = tree_factory(tmp_path / "train", n_classes=2, per_class=4)
    args = ["--config", str(ROOT / "code" / "configs" / "toy.yaml"), "--logdir", str(tmp_path / "log"),
            "--run_name", "run", "--no_progress"]
    for item in (f"dataset.train={tree}", "dataset.exclude_identities=[]", "model_name=sphereface4", "emb_dim=8",
                 "batch_size=4", "num_workers=0", "max_iters=2", "checkpoint_every=1", "log_every=1",
                 "warmup_iters=0", "lr=0.05", "device=cpu"):
        args += ["--set", item]
    assert train_cli.main(args) == 0
    assert train_cli.main(args + ["--resume", "--set", "max_iters=3", "--set", "lr=0.01", "--set", "beta=0.25"]) == 0
    run = tmp_path / "log" / "run"
    (run / "lfw_results.json").write_text(json.dumps({"protocol": "sphereface", "fold_accuracies": [0.9, 0.8],
                                                      "accuracy_mean": 0.85}))  # as test.py writes it
    loaded = load_run(run)
    assert (loaded.config["lr"], loaded.config["beta"], loaded.config["max_iters"]) == (0.01, 0.25, 3)
    assert [entry["iteration"] for entry in loaded.history] == [2]
    capsys.readouterr()
    assert load_script().main([str(run)]) == 0
    out = capsys.readouterr().out
    assert list(table_rows(out, "- LFW accuracy")) == ["alpha=1.0/beta=0.25"]
    assert "  - alpha=1.0/beta=0.25: from iteration 2: lr 0.05 -> 0.01, max_iters 2 -> 3, beta 0.5 -> 0.25" in out
