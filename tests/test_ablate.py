"""ablate.py end to end: a grid of settings trained and tested, the earlier port's tables, resumable; a bad
setting fails before any work, and the grid's folders are locked while it runs."""
import json
import os
from pathlib import Path

import pytest
import torch

import ablate
from conftest import write_aligned_tree, write_lfw_tree
from uniformface.train import trainer
from uniformface.base.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "code" / "configs" / "toy.yaml")


@pytest.fixture
def data(tmp_path):
    train = write_aligned_tree(tmp_path / "train")
    lfw, pairs = write_lfw_tree(tmp_path / "test")
    return ["--set", f"dataset.train={train}", f"dataset.test={lfw}", f"dataset.pairs={pairs}",
            "dataset.exclude_identities=[]", "model_name=sphereface4", "emb_dim=32", "batch_size=8",
            "num_workers=0", "max_iters=6", "checkpoint_every=3", "log_every=2", "milestones=[4]",
            "warmup_iters=2", "lr=0.05", "device=cpu", "deterministic=true", "--no_progress"]


@pytest.fixture
def steps(monkeypatch):
    """Counts Trainer.step calls; `steps["interrupt_at"] = n` raises KeyboardInterrupt on the n-th call."""
    record = {"count": 0, "interrupt_at": None}
    original = trainer.Trainer.step

    def counted(self, images, labels):
        record["count"] += 1
        if record["count"] == record["interrupt_at"]:
            raise KeyboardInterrupt("simulated kill")
        return original(self, images, labels)

    monkeypatch.setattr(trainer.Trainer, "step", counted)
    return record


def table(markdown, title):
    """{row name: [cells as floats]} of the markdown table after the line starting with `title`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title)) + 4
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows


@pytest.mark.parametrize("grid, message", [(["alpah=0,1"], "unknown key 'alpah'; did you mean 'alpha'"),
                                           (["beta=0,2"], "'beta'.*must be in \\[0, 1\\], got 2")])
def test_bad_setting_fails_before_any_work(tmp_path, data, steps, capsys, grid, message):
    import re

    logdir = tmp_path / "ablation"
    assert ablate.main(["--config", TOY, "--logdir", str(logdir), "--grid", *grid, *data]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert steps["count"] == 0 and not logdir.exists()  # beta=0 was valid, yet nothing of it ran


@pytest.mark.slow
def test_grid_trains_tests_writes_tables_and_reruns_nothing(tmp_path, data, steps, capsys):
    logdir = tmp_path / "ablation"
    argv = ["--config", TOY, "--logdir", str(logdir), "--grid", "alpha=0,1", "beta=0,0.001", *data]
    assert ablate.main(argv) == 0
    assert steps["count"] == 4 * 6
    printed = capsys.readouterr().out
    markdown = (logdir / "results.md").read_text()
    assert markdown in printed
    assert "![training curves](curves.png)" in markdown and (logdir / "curves.png").read_bytes()[:4] == b"\x89PNG"

    folders = {"alpha=0.0/beta=0.0": "alpha=0_beta=0", "alpha=0.0/beta=0.001": "alpha=0_beta=0.001",
               "alpha=1.0/beta=0.0": "alpha=1_beta=0", "alpha=1.0/beta=0.001": "alpha=1_beta=0.001"}
    accuracy = table(markdown, "- LFW accuracy")
    distance = table(markdown, "- average of minimum class distance")
    assert list(accuracy) == list(folders) and list(distance) == list(folders)  # grid order, one row each
    for row, folder in folders.items():
        run = logdir / folder
        config = (run / "config.yaml").read_text()
        alpha, beta = row.replace("alpha=", "").replace("beta=", "").split("/")
        assert f"alpha: {alpha}" in config and f"beta: {beta}" in config  # the grid reached the training
        results = json.loads((run / "lfw_results.json").read_text())
        expected = [round(100 * results["accuracy_mean"], 3)] + [round(100 * a, 3) for a in results["fold_accuracies"]]
        assert accuracy[row] == pytest.approx(expected, abs=1e-9)
        assert len(results["fold_accuracies"]) == 2  # the tiny pairs file has 2 folds
        assert distance[row] == pytest.approx([round(results["mean_min_center_distance"], 4)], abs=1e-9)

    # each setting's results are what test.py writes for its weights (apart from where the ROC figure went)
    from conftest import load_script

    run = logdir / "alpha=1_beta=0.001"
    again = tmp_path / "again.json"
    assert load_script("test").main(["--model_path", str(run / "sphereface4_32.pt"), "--json", str(again),
                                     "--workers", "0", "--device", "cpu", "--no_progress"]) == 0
    ours, theirs = json.loads((run / "lfw_results.json").read_text()), json.loads(again.read_text())
    assert ours.pop("roc_png").endswith("lfw_roc.png") and theirs.pop("roc_png").endswith("again_roc.png")
    assert ours == theirs
    capsys.readouterr()

    stamps = {p: p.stat().st_mtime_ns for p in logdir.glob("*/*") if p.suffix in (".pt", ".json")}
    assert len(stamps) == 4 * 3  # weights, checkpoint, results per setting
    assert ablate.main(argv) == 0
    assert steps["count"] == 4 * 6  # nothing trained again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nor tested again
    assert capsys.readouterr().out.count(": done (") == 4
    assert (logdir / "results.md").read_text() == markdown

    # trained but not tested (killed during the test): only the test runs again
    (logdir / "alpha=1_beta=0" / "lfw_results.json").unlink()
    assert ablate.main(argv) == 0 and steps["count"] == 4 * 6
    assert (logdir / "alpha=1_beta=0" / "lfw_results.json").is_file()
    assert (logdir / "results.md").read_text() == markdown


@pytest.mark.slow
def test_interrupted_setting_resumes_from_its_checkpoint(tmp_path, data, steps):
    logdir = tmp_path / "ablation"
    argv = ["--config", TOY, "--logdir", str(logdir), "--grid", "alpha=1", "beta=0,0.001", *data]
    steps["interrupt_at"] = 6 + 4  # the second setting, after its checkpoint at iteration 3
    assert ablate.main(argv) == 130  # Ctrl-C: one line, status 130
    first, second = logdir / "alpha=1_beta=0", logdir / "alpha=1_beta=0.001"
    done_stamp = (first / "lfw_results.json").stat().st_mtime_ns
    assert torch.load(second / "checkpoint.pt", weights_only=True)["iteration"] == 3
    assert not (second / "sphereface4_32.pt").exists()

    steps.update(count=0, interrupt_at=None)
    assert ablate.main(argv + ["--list"]) == 0 and steps["count"] == 0
    assert ablate.main(argv) == 0
    assert steps["count"] == 3  # iterations 4..6 only: resumed, not restarted
    assert (first / "lfw_results.json").stat().st_mtime_ns == done_stamp
    logged = [json.loads(line)["iteration"] for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert logged == [2, 4, 6]
    assert list(table((logdir / "results.md").read_text(), "- LFW accuracy")) == \
        ["alpha=1.0/beta=0.0", "alpha=1.0/beta=0.001"]

    # the resumed weights are those of an uninterrupted run of the same setting
    reference = trainer.train(load_config(TOY, [*data[1:-1], "alpha=1", "beta=0.001"]), tmp_path / "ref",
                              progress=False)
    a, b = torch.load(reference, weights_only=True), torch.load(second / "sphereface4_32.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.slow
def test_diverged_setting_is_reported_and_not_retried(tmp_path, data, steps, capsys):
    logdir = tmp_path / "ablation"
    argv = ["--config", TOY, "--logdir", str(logdir), "--grid", "lr=0.05,1e30", *data,
            "--set", "grad_clip=0", "warmup_iters=3", "checkpoint_every=1"]
    assert ablate.main(argv) == 0
    markdown = (logdir / "results.md").read_text()
    assert list(table(markdown, "- LFW accuracy")) == ["alpha=1.0/beta=0.5/lr=0.05"]
    assert "- diverged (no results):" in markdown and "lr=1e+30: loss is not finite" in markdown
    assert (logdir / "lr=1e+30" / "diverged.txt").is_file()
    capsys.readouterr()
    used = steps["count"]
    assert ablate.main(argv) == 0 and steps["count"] == used
    assert "lr=1e+30" in capsys.readouterr().out


def test_other_settings_in_the_folder_are_refused(tmp_path, data, steps, capsys):
    logdir = tmp_path / "ablation"
    argv = ["--config", TOY, "--logdir", str(logdir), "--grid", "alpha=1", *data]
    steps["interrupt_at"] = 5
    assert ablate.main(argv) == 130
    assert ablate.main(argv + ["--set", "lr=0.01"]) == 2
    assert "lr: 0.05 in the folder, 0.01 asked" in capsys.readouterr().err


def test_a_second_ablation_or_a_train_py_into_its_folders_is_refused_at_once(tmp_path, data, steps, capsys,
                                                                              monkeypatch):
    """The grid's LOGDIR and its settings' folders are locked while it runs."""
    import signal
    import socket

    import train as train_cli
    from test_locks import hold_lock

    logdir = tmp_path / "ablation"
    argv = ["--config", TOY, "--logdir", str(logdir), "--grid", "alpha=1", *data]
    holder = hold_lock(logdir)
    try:
        assert ablate.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("ablate.py: error: ") and err.count("\n") == 1, err
        assert f"{logdir} is in use by process {holder.pid} on host {socket.gethostname()}" in err
        assert steps["count"] == 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    def train_py_meanwhile(self, images, labels):  # what a train.py into the setting's folder meets mid-grid
        status = train_cli.main(["--config", TOY, "--logdir", str(logdir), "--run_name", "alpha=1", "--no_progress"])
        raise KeyboardInterrupt(f"train.py returned {status}")

    monkeypatch.setattr(trainer.Trainer, "step", train_py_meanwhile)
    assert ablate.main(argv) == 130
    err = capsys.readouterr().err
    assert f"error: {logdir / 'alpha=1'} is in use by process {os.getpid()}" in err


@pytest.mark.slow
def test_a_setting_resumed_with_other_run_settings_lists_the_change(tmp_path, data, steps):
    """Keys that do not change what a run computes (log_every here) may differ at a resume: the folder's
    config.yaml is rewritten with them and results.md lists the change under the tables."""
    logdir = tmp_path / "ablation"
    argv = ["--config", TOY, "--logdir", str(logdir), "--grid", "alpha=1", *data]
    steps["interrupt_at"] = 5  # after the checkpoint of iteration 3
    assert ablate.main(argv) == 130
    steps.update(count=0, interrupt_at=None)
    assert ablate.main(argv + ["--set", "log_every=3"]) == 0
    assert steps["count"] == 3
    assert load_config(logdir / "alpha=1" / "config.yaml").log_every == 3
    markdown = (logdir / "results.md").read_text()
    assert list(table(markdown, "- LFW accuracy")) == ["alpha=1.0/beta=0.5"]
    assert "  - alpha=1.0/beta=0.5: from iteration 3: log_every 2 -> 3" in markdown
