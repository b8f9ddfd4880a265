"""plot_runs.py end to end: the curves of run folders drawn into a PNG (of a real training run too), an
existing file kept without --overwrite, and a damaged or missing metrics file as one line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_script, write_aligned_tree
from hostile import one_line_error
from test_plots import TITLES, is_png, panels, write_run

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "code" / "configs" / "toy.yaml")


def test_two_runs_into_one_png(tmp_path, capsys):
    a = write_run(tmp_path / "a", 0.0)
    b = write_run(tmp_path / "b", 1.0, lfw_at=(80,))
    output = tmp_path / "figures" / "curves.png"
    plot_runs = load_script("plot_runs")
    assert plot_runs.main([str(a), str(b), "--output", str(output), "--window", "2"]) == 0
    out = capsys.readouterr().out
    assert is_png(output)
    assert "alpha=0.0/beta=0.5: iterations 20..80" in out and f"wrote {output}" in out

    output.write_bytes(b"someone's picture")
    assert plot_runs.main([str(a), "--output", str(output)]) == 1
    one_line_error(capsys.readouterr().err, "plot_runs.py: error:", str(output), "--overwrite")
    assert output.read_bytes() == b"someone's picture"
    assert plot_runs.main([str(a), "--output", str(output), "--overwrite", "--names", "plain"]) == 0
    assert is_png(output)


def test_usage_errors_before_any_work(tmp_path, capsys):
    a = write_run(tmp_path / "a", 0.0)
    plot_runs = load_script("plot_runs")
    for argv, words in ((["--names", "x", "y"], "2 names for 1 runs"), (["--window", "0"], "--window"),
                        (["--output", str(tmp_path / "c.pdf")], "expected a .png")):
        assert plot_runs.main([str(a), *argv]) == 2
        assert words in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_an_unreadable_metrics_file_is_one_line(tmp_path, capsys):
    a = write_run(tmp_path / "a", 0.0)
    damaged = write_run(tmp_path / "b", 1.0, text='{"iteration": 10, "loss": 1}\n{"iteration": 20,\n'
                                                  '{"iteration": 30, "loss": 1}\n')
    output = tmp_path / "curves.png"
    plot_runs = load_script("plot_runs")
    assert plot_runs.main([str(a), str(damaged), "--output", str(output)]) == 1
    one_line_error(capsys.readouterr().err, f"plot_runs.py: error: {damaged / 'metrics.jsonl'}:2: not a JSON record")
    assert plot_runs.main([str(a), str(tmp_path / "nowhere"), "--output", str(output)]) == 1
    one_line_error(capsys.readouterr().err, str(tmp_path / "nowhere" / "metrics.jsonl"), "no such file")
    if os.geteuid() != 0:  # root reads any file
        locked = write_run(tmp_path / "locked", 1.0)
        (locked / "metrics.jsonl").chmod(0)
        assert plot_runs.main([str(locked), "--output", str(output)]) == 1
        one_line_error(capsys.readouterr().err, str(locked / "metrics.jsonl"), "permission denied")
    assert not output.exists()


def test_the_installed_command_needs_no_display(tmp_path):
    """As a user runs it on a headless machine: no DISPLAY, no MPLBACKEND."""
    a = write_run(tmp_path / "a", 0.0)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY")}
    done = subprocess.run([sys.executable, str(ROOT / "code" / "plot_runs.py"), str(a), "--output",
                           str(tmp_path / "c.png")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert is_png(tmp_path / "c.png")


@pytest.mark.slow
def test_a_real_run_while_it_trains_and_when_resumed(tmp_path, capsys):
    """A run of the trainer itself (4 iterations), its log read back; then as a reader sees it while the
    trainer appends a line (cut), and after a resume that went back to the checkpoint at 2."""
    from uniformface.base.config import load_config
    from uniformface.tools.plots import curves_figure, load_runs
    from uniformface.train.trainer import train

    tree = write_aligned_tree(tmp_path / "train", n_classes=3, per_class=4)
    cfg = load_config(TOY, [f"dataset.train={tree}", "dataset.exclude_identities=[]", "emb_dim=3", "batch_size=6",
                            "num_workers=0", "max_iters=4", "checkpoint_every=2", "log_every=2", "milestones=[3]",
                            "warmup_iters=0", "device=cpu"])
    run = tmp_path / "log" / "run"
    train(cfg, run, progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 4]

    plot_runs = load_script("plot_runs")
    assert plot_runs.main([str(run), "--output", str(tmp_path / "c.png")]) == 0
    assert is_png(tmp_path / "c.png")
    drawn = panels(curves_figure(load_runs([run])))
    assert list(drawn) == TITLES
    for title, key in zip(TITLES, ("accuracy", "cross_entropy", "uniform_loss", "lambda", "lr", "mean_min_center_angle")):
        x, y = drawn[title]["alpha=1.0/beta=0.5"]
        assert x.tolist() == [2, 4] and y.tolist() == [r[key] for r in records], title

    with open(run / "metrics.jsonl", "a") as handle:  # what a reader sees while the trainer writes a line
        handle.write(json.dumps({**records[0], "iteration": 2, "accuracy": 0.5}) + "\n" + '{"iteration": 4, "lo')
    capsys.readouterr()
    assert plot_runs.main([str(run), "--output", str(tmp_path / "c.png"), "--overwrite"]) == 0
    assert "iterations 2..2" in capsys.readouterr().out  # the resumed 2; the abandoned 4 and the cut line are not drawn
    drawn = panels(curves_figure(load_runs([run])))
    assert drawn["training accuracy"]["alpha=1.0/beta=0.5"][1].tolist() == [0.5]


def test_values_no_run_logs_and_a_yaml_bomb_are_one_line_naming_the_file(tmp_path, capsys):
    """A value of 1e308 ended in matplotlib's "arange: cannot compute length" (naming nothing), an
    iteration of 1e30 in an OverflowError traceback, and a billion-laughs config.yaml beside the metrics
    made the labels hang: exit 1, one line naming the file (and line), no PNG."""
    from test_config import billion_laughs

    plot_runs, output = load_script("plot_runs"), tmp_path / "curves.png"
    good = write_run(tmp_path / "good", 0.0)
    cases = [('{"iteration": 10, "accuracy": 0.5, "cross_entropy": 1e308}\n', ":1: 'cross_entropy' is 1e+308"),
             ('{"iteration": 10, "accuracy": 0.5}\n{"iteration": 1000000000000000000000000000000, "accuracy": 0.6}\n',
              ":2: 'iteration' is 1000000000000000000000000000000, not an iteration number")]
    for number, (text, words) in enumerate(cases):
        run = write_run(tmp_path / f"run{number}", 1.0, text=text)
        assert plot_runs.main([str(good), str(run), "--output", str(output), "--window", "2"]) == 1
        one_line_error(capsys.readouterr().err, f"plot_runs.py: error: {run / 'metrics.jsonl'}{words}")
    (good / "config.yaml").write_text(billion_laughs("alpha") + "beta: 0.5\n")
    proc = subprocess.run([sys.executable, str(ROOT / "code/plot_runs.py"), str(good), "--output", str(output)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    one_line_error(proc.stderr, f"plot_runs.py: error: {good / 'config.yaml'}:3: YAML alias *l0 refused")
    assert not output.exists()
