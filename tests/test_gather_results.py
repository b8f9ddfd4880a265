"""gather_results.py end to end: several runs' lfw_results.json -> the earlier port's README tables on stdout
or in --output; errors as one line. The tables themselves are tested in test_report.py."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import load_script
from test_report import make_run, table_rows
from uniformface.tools.report import load_run

ROOT = Path(__file__).resolve().parents[1]


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
    gather = load_script("gather_results")
    assert gather.main([str(a), str(tmp_path / "missing")]) == 1
    assert str(tmp_path / "missing" / "lfw_results.json") in capsys.readouterr().err
    assert gather.main([str(a), "--names", "x", "y"]) == 2
    assert "2 names for 1 runs" in capsys.readouterr().err


def test_an_existing_output_and_a_broken_config_are_one_line_errors(tmp_path, capsys):
    """--output used to replace any file there; a broken config.yaml beside the results was a traceback."""
    a, _ = make_run(tmp_path / "a", 0.0, 0.0, [594] * 10, 0.15)
    gather = load_script("gather_results")
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
    assert load_script("gather_results").main([str(run)]) == 0
    out = capsys.readouterr().out
    assert list(table_rows(out, "- LFW accuracy")) == ["alpha=1.0/beta=0.25"]
    assert "  - alpha=1.0/beta=0.25: from iteration 2: lr 0.05 -> 0.01, max_iters 2 -> 3, beta 0.5 -> 0.25" in out


def test_hostile_results_and_settings_files_are_one_line_naming_the_file(tmp_path, capsys):
    """`accuracy_mean: 1e400` (printed as `inf`), folds written as strings (a format error naming nothing),
    and a billion-laughs config.yaml or config_history.yaml beside the results (gather_results.py hung,
    growing to GBs): exit 1 at once, one line naming the file, no --output written."""
    from hostile import one_line_error
    from test_config import billion_laughs

    gather, output = load_script("gather_results"), tmp_path / "table.md"
    folder, _ = make_run(tmp_path / "run", 1.0, 0.5, [590] * 10)
    results = folder / "lfw_results.json"
    good = results.read_text()
    for text, words in ((good.replace('"accuracy_mean": ', '"accuracy_mean": 1e400, "was": '),
                         ["'accuracy_mean' is inf, not an accuracy"]),
                        (good.replace('"fold_accuracies": [', '"fold_accuracies": ["0.99", '),
                         ["fold 1 of 'fold_accuracies' is \"0.99\", not an accuracy"])):
        results.write_text(text)
        assert gather.main([str(folder), "--output", str(output)]) == 1
        one_line_error(capsys.readouterr().err, f"gather_results.py: error: {results}: ", *words)
    results.write_text(good)
    script = str(ROOT / "code" / "gather_results.py")
    history = "- iteration: 3\n  changed:\n    lr:\n" + billion_laughs("from", " " * 6)
    for name, text, line in (("config.yaml", billion_laughs("alpha"), 3), ("config_history.yaml", history, 6)):
        if name == "config_history.yaml":
            (folder / "config.yaml").write_text("alpha: 1.0\nbeta: 0.5\n")
        (folder / name).write_text(text)
        proc = subprocess.run([sys.executable, script, str(folder), "--output", str(output)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 1 and proc.stdout == "", proc.stderr
        one_line_error(proc.stderr, f"gather_results.py: error: {folder / name}:{line}: YAML alias *l0 refused")
    assert not output.exists()


def test_a_run_still_training_is_listed_by_its_val_targets_figures(tmp_path, capsys):
    """A run folder whose metrics.jsonl holds val/<set> figures and that test.py has not scored yet: listed
    with its last figures beside a tested run (it was 'no results file', exit 1)."""
    from test_report import write_validation

    tested, _ = make_run(tmp_path / "a", 0.0, 0.0, [594] * 10, 0.15)
    training = tmp_path / "b"
    write_validation(training, {2000: {"lfw": 0.9, "cfp_fp": 0.8}, 4000: {"lfw": 0.9925, "cfp_fp": 0.875}})
    assert load_script("gather_results").main([str(tested), str(training), "--names", "tested", "training"]) == 0
    out = capsys.readouterr().out
    assert table_rows(out, "- val_targets during training") == {"training": [4000, 99.25, 87.5]}
    assert list(table_rows(out, "- LFW accuracy")) == ["tested"]
