"""train.py end to end: a bad config is a usage error (exit 2) before anything is written; the faults in
training (docs/RELIABILITY.md, "Reliability: hostile inputs and faults in training") end in one line naming
the file, key or device and the fix, and lose nothing; a killed or diverged run resumes; --resume records
the settings that changed. The training itself (Trainer, the step, the run folder) is tested in
test_trainer.py."""
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train as train_cli
from conftest import denormals_flushed, write_aligned_tree
from hostile import one_line_error
from uniformface.base.config import load_config, save_config

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "code" / "configs" / "toy.yaml")


def cli_args(tree, logdir, *overrides, run="run"):
    """train.py arguments for a tiny run (2 iterations of 4 images, a checkpoint after each) and `overrides`."""
    args = ["--config", TOY, "--logdir", str(logdir), "--run_name", run, "--no_progress"]
    for item in [f"dataset.train={tree}", "dataset.exclude_identities=[]", "model_name=sphereface4", "emb_dim=8",
                 "batch_size=4", "num_workers=0", "max_iters=2", "checkpoint_every=1", "log_every=1",
                 "milestones=[100]", "warmup_iters=0", "lr=0.05", "device=cpu", "deterministic=true", *overrides]:
        args += ["--set", item]
    return args


def one_error_line(err):
    return one_line_error(err)


def all_finite(tensors):
    return all(bool(torch.isfinite(v).all()) for v in tensors.values() if v.is_floating_point())


def test_a_misspelt_key_is_refused_before_any_work(tmp_path):
    # The dataset path does not exist either: the config error must be reported first, with exit 2.
    proc = subprocess.run([sys.executable, str(ROOT / "code" / "train.py"), "--config", TOY, "--logdir", str(tmp_path),
                           "--set", "bach_size=8"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("train.py: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "unknown key 'bach_size'" in proc.stderr and "batch_size" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_a_nan_learning_rate_is_refused_before_any_work(tmp_path, capsys):
    status = train_cli.main(["--config", TOY, "--logdir", str(tmp_path), "--set", "lr=.nan"])
    assert status == 2 and "key 'lr' must be a finite number, got nan" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_an_installation_without_the_source_trees_config_asks_for_one(tmp_path, capsys, monkeypatch):
    """After `pip install .` the package has no code/config.yaml beside it: the default --config is refused
    as a usage error that says what to pass."""
    from uniformface.commands import train

    monkeypatch.setattr(train, "DEFAULT_CONFIG", tmp_path / "site-packages" / "config.yaml")
    assert train.main(["--logdir", str(tmp_path / "log")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("train.py: error: --config: this installation has no ") and "pass --config FILE" in err
    assert not (tmp_path / "log").exists()


# ------------------------------------------------------------------ hostile inputs and faults in training

class Exploit:
    """A pickle that runs a shell command when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_runs_code_is_refused_and_nothing_runs(tmp_path, capsys):
    tree = write_aligned_tree(tmp_path / "train", n_classes=2, per_class=4)
    run = tmp_path / "log" / "run"
    cfg = load_config(TOY, [f"dataset.train={tree}", "model_name=sphereface4", "emb_dim=8", "batch_size=4",
                            "num_workers=0", "device=cpu"])
    save_config(cfg, run / "config.yaml")
    marker = tmp_path / "pwned"
    torch.save({"iteration": 1, "model": {}, "rng": Exploit(marker)}, run / "checkpoint.pt")
    status = train_cli.main(["--config", TOY, "--logdir", str(tmp_path / "log"), "--run_name", "run", "--resume",
                             "--no_progress"])
    err = capsys.readouterr().err
    assert status == 1 and not marker.exists()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{run / 'checkpoint.pt'}: refused" in err and "'posix.system'" in err and "nothing in it was run" in err
    # the payload is real: a plain unpickling does run it
    torch.load(run / "checkpoint.pt", weights_only=False)
    assert marker.exists()


def test_divergence_names_a_finite_checkpoint_from_which_a_smaller_lr_trains_on(tmp_path, small_tree, capsys):
    """With checkpoint_every 1: iteration 1 (lr 1e30) leaves finite but huge weights,
    whose loss at iteration 2 is NaN. The checkpoint of iteration 1 would diverge again whatever the lr;
    the message must name one that does not."""
    run = tmp_path / "log" / "run"
    args = cli_args(small_tree, tmp_path / "log", "lr=1e30", "max_iters=4")
    assert train_cli.main(args) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "loss is not finite at iteration 2" in err and "no weights file written" in err
    named = run / "checkpoint.pt"
    assert f"The last good checkpoint is {named} (iteration 0" in err and "--resume --set lr=" in err
    state = torch.load(named, weights_only=True)
    assert state["iteration"] == 0 and all_finite(state["model"]) and all_finite(state["centers"])
    assert not (run / "sphereface4_8.pt").exists()
    # continuing from it with a smaller learning rate trains to the end
    assert train_cli.main(args + ["--resume", "--set", "lr=0.05"]) == 0, capsys.readouterr().err
    weights = torch.load(run / "sphereface4_8.pt", weights_only=True)
    assert weights["iteration"] == 4 and all_finite(weights["model"])
    assert not (run / "checkpoint.prev.pt").exists()  # kept only while the run trains


def test_final_step_that_blows_up_the_weights_is_no_success(tmp_path, small_tree, capsys):
    """The loss of the last iteration is finite, its update (lr 1e10 x weight decay 1e30)
    overflows float32: exit 1, the iteration named, no weights file (it used to save all-inf weights)."""
    run = tmp_path / "log" / "run"
    assert train_cli.main(cli_args(small_tree, tmp_path / "log", "lr=1e10", "weight_decay=1e30", "max_iters=1")) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "the weights (" in err and "are not finite after iteration 1" in err
    assert f"The last good checkpoint is {run / 'checkpoint.pt'} (iteration 0" in err
    assert not (run / "sphereface4_8.pt").exists()
    assert all_finite(torch.load(run / "checkpoint.pt", weights_only=True)["model"])


def test_weights_whose_features_are_not_finite_are_no_success(tmp_path, small_tree, capsys):
    """lr 1e30 for one iteration: its loss is finite and so are the weights it leaves (about 1e27), but not
    the features they give (test.py then refuses them). Exit 1 naming the iteration and the checkpoint to
    resume from, no weights file (it used to exit 0 with them)."""
    run = tmp_path / "log" / "run"
    assert train_cli.main(cli_args(small_tree, tmp_path / "log", "lr=1e30", "max_iters=1")) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "the weights of iteration 1 give non-finite features" in err and "no weights file written" in err
    assert f"The last good checkpoint is {run / 'checkpoint.pt'} (iteration 0" in err and "--resume --set lr=" in err
    assert not (run / "sphereface4_8.pt").exists()
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 0 and all_finite(state["model"])


def test_a_run_killed_after_its_last_checkpoint_writes_its_weights_at_resume(tmp_path, small_tree):
    """Killed after the checkpoint of max_iters, before the weights file: --resume steps no more, checks the
    features of a batch it draws itself, and writes the same weights."""
    run = tmp_path / "log" / "run"
    args = cli_args(small_tree, tmp_path / "log")
    assert train_cli.main(args) == 0
    first = torch.load(run / "sphereface4_8.pt", weights_only=True)
    (run / "sphereface4_8.pt").unlink()
    assert train_cli.main(args + ["--resume"]) == 0
    again = torch.load(run / "sphereface4_8.pt", weights_only=True)
    assert again["iteration"] == 2 and all(torch.equal(again["model"][k], first["model"][k]) for k in first["model"])


def test_images_of_another_size_are_named_and_skipped(tmp_path, small_tree, capsys):
    """One 112x112 face among 112x96 ones, past the first 8 samples of old."""
    odd = small_tree / "0000001" / "003.jpg"
    Image.fromarray(np.full((112, 112, 3), 128, np.uint8)).save(odd)
    assert train_cli.main(cli_args(small_tree, tmp_path / "log", "max_iters=4")) == 0
    err = capsys.readouterr().err
    assert f"1 of the 8 training images in {small_tree} have another size than input_size and are skipped: " \
           f"{odd}: 112x112" in err
    lines = [json.loads(l) for l in (tmp_path / "log" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["broken_images"] == 2  # 2 epochs of 8 images: met twice, skipped twice


def test_lfw_evaluation_during_training_is_logged(tmp_path, small_tree, lfw_tree):
    """With eval_every, train.py evaluates the LFW protocol on dataset.test / dataset.pairs while it trains:
    metrics.jsonl and TensorBoard get the accuracy, the last one that of the final weights."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from uniformface.eval.evaluate import evaluate_pairs
    from uniformface.eval.trained_network import load_backbone

    root, pairs = lfw_tree
    run = tmp_path / "log" / "run"
    assert train_cli.main(cli_args(small_tree, tmp_path / "log", "eval_every=1", f"dataset.test={root}",
                                   f"dataset.pairs={pairs}")) == 0
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [l for l in lines if "lfw_accuracy" in l]
    assert [sorted(l) for l in evals] == [["iteration", "lfw_accuracy", "lfw_accuracy_std"]] * 2
    assert [l["iteration"] for l in evals] == [1, 2] and all(0 <= l["lfw_accuracy"] <= 1 for l in evals)
    backbone = load_backbone(run / "sphereface4_8.pt")[0]
    final = evaluate_pairs(backbone, root, pairs, num_workers=0, progress=False)
    assert (evals[-1]["lfw_accuracy"], evals[-1]["lfw_accuracy_std"]) == (final["accuracy_mean"], final["accuracy_std"])
    events = EventAccumulator(str(run))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("lfw/accuracy")] == \
           [(l["iteration"], pytest.approx(l["lfw_accuracy"], rel=1e-6)) for l in evals]


def run_script(args, timeout=120, **env):
    """code/train.py as a subprocess (for what must not hang, or needs its own environment)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "code" / "train.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1", **env))
    return proc, time.perf_counter() - started


@pytest.mark.slow
def test_a_training_set_of_undecodable_files_fails_at_once(tmp_path, small_tree):
    """It used to spin forever on empty batches."""
    for path in small_tree.glob("*/*.jpg"):
        path.write_bytes(b"not an image at all")
    proc, _ = run_script(cli_args(small_tree, tmp_path / "log"), timeout=60)
    assert proc.returncode == 1
    err = one_error_line(proc.stderr)
    assert f"training set {small_tree}: none of its 8 image files can be read (8 unreadable" in err


@pytest.mark.slow
def test_images_whose_pixels_do_not_decode_stop_the_run_within_an_epoch(tmp_path, small_tree):
    """Headers intact, data cut: the header check passes, the loop meets only empty batches."""
    for path in small_tree.glob("*/*.jpg"):
        path.write_bytes(path.read_bytes()[:700])
    proc, seconds = run_script(cli_args(small_tree, tmp_path / "log", "max_iters=50"), timeout=60)
    assert proc.returncode == 1, proc.stderr[-2000:]
    err = proc.stderr.splitlines()
    assert err[-1].startswith(f"train.py: error: training set {small_tree}: no image of the last 2 batches could be used "
                              "(8 unreadable or wrong-sized images met so far"), err
    assert sum("warning: skipped a training image: cannot decode image" in line for line in err) == 5
    assert "Traceback" not in proc.stderr


def test_a_missing_gpu_or_an_unknown_device_is_one_line(tmp_path, small_tree):
    proc, _ = run_script(cli_args(small_tree, tmp_path / "log", "device=cuda"), CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 1
    err = one_error_line(proc.stderr)
    assert "config key 'device' cuda: no CUDA GPU is available" in err and "(use --set device=cpu)" in err
    assert not (tmp_path / "log").exists()


def test_denormals_are_flushed_before_the_val_targets_sets_are_decoded(tmp_path, small_tree, monkeypatch):
    """Decoding the sets is the run's first parallel CPU work, and its threads keep the denormal setting
    they start with (docs/DESIGN.md §5.1): train.py sets it first."""
    import uniformface.eval.during_training as during_training

    seen = []

    def evaluators(cfg, load=True):
        seen.append(denormals_flushed())
        return []

    monkeypatch.setattr(during_training, "training_evaluators", evaluators)
    torch.set_flush_denormal(False)
    assert train_cli.main(cli_args(small_tree, tmp_path / "log")) == 0
    assert seen == [True]


def test_unknown_device_is_a_config_error(tmp_path, small_tree, capsys):
    assert train_cli.main(cli_args(small_tree, tmp_path / "log", "device=gpu")) == 2
    assert "key 'device' is 'gpu'; choose auto, cpu, cuda, cuda:N or mps" in capsys.readouterr().err
    assert not (tmp_path / "log").exists()


def test_read_only_log_folder_is_one_line_and_debug_shows_the_traceback(tmp_path, small_tree, capsys):
    from hostile import read_only_folder

    with read_only_folder(tmp_path / "log") as logdir:
        assert train_cli.main(cli_args(small_tree, logdir)) == 1
        err = one_error_line(capsys.readouterr().err)
        assert f"cannot write in {logdir / 'run'}" in err and "choose a writable --logdir" in err
        assert train_cli.main(cli_args(small_tree, logdir) + ["--debug"]) == 1
        assert "Traceback (most recent call last)" in capsys.readouterr().err


class FullDisk:
    """The file object a write goes to, on a disk with `room` bytes left: the write that does not fit stores
    what fits, then fails with ENOSPC as write() does on a full disk (a fault injected at the file:
    torch.save itself runs)."""

    def __init__(self, handle, room):
        self.handle, self.room = handle, room

    def write(self, data):
        if len(data) > self.room:
            self.handle.write(bytes(data[:self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return self.handle.__exit__(*exc_info)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names an open file through /proc/self/fd")
def test_disk_full_while_writing_a_checkpoint(tmp_path, small_tree, capsys, monkeypatch):
    """The disk fills up 1000 bytes into the checkpoint of iteration 1 (inside torch.save, whose zip writer
    used to turn that into a traceback ending in "inline_container.cc ... unexpected pos"): one line naming
    the file and the fix, the checkpoint before intact, no temporary left; after space is freed, --resume
    finishes, and leaves no temporary either (checkpoint.pt and checkpoint.prev.pt are one file then)."""
    real_fdopen, checkpoints = os.fdopen, []

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        if Path(f"/proc/self/fd/{fd}").readlink().name.startswith(".checkpoint.pt."):
            checkpoints.append(fd)
            if len(checkpoints) == 2:  # iteration 0's was the first
                return FullDisk(handle, room=1000)
        return handle

    monkeypatch.setattr(os, "fdopen", fdopen)
    run = tmp_path / "log" / "run"
    args = cli_args(small_tree, tmp_path / "log")
    assert train_cli.main(args) == 1
    err = one_error_line(capsys.readouterr().err)
    assert f"cannot write {run / 'checkpoint.pt'} (No space left on device)" in err
    assert f"the checkpoint {run / 'checkpoint.pt'} of iteration 0 is intact: free space on that disk" in err
    assert "--resume" in err and len(checkpoints) == 2
    assert torch.load(run / "checkpoint.pt", weights_only=True)["iteration"] == 0
    assert not list(run.glob(".*.partial")) and not (run / "sphereface4_8.pt").exists()
    assert os.path.samefile(run / "checkpoint.pt", run / "checkpoint.prev.pt")
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert train_cli.main(args + ["--resume"]) == 0
    assert torch.load(run / "sphereface4_8.pt", weights_only=True)["iteration"] == 2
    assert not list(run.glob(".*.partial"))


def test_a_resume_where_the_checkpoint_and_the_one_before_are_one_file_leaves_no_temporary(tmp_path, small_tree):
    """A kill (or a full disk) between keeping the previous checkpoint and writing the new one leaves
    checkpoint.pt and checkpoint.prev.pt as hard links of one file: the resumed run used to finish with a
    hidden `.checkpoint.prev.pt.*.partial` (a whole checkpoint) left behind."""
    run = tmp_path / "log" / "run"
    args = cli_args(small_tree, tmp_path / "log", "max_iters=1")
    assert train_cli.main(args) == 0
    os.link(run / "checkpoint.pt", run / "checkpoint.prev.pt")
    assert train_cli.main(args + ["--resume", "--set", "max_iters=3"]) == 0
    assert not list(run.glob(".*.partial")) and not (run / "checkpoint.prev.pt").exists()
    assert torch.load(run / "sphereface4_8.pt", weights_only=True)["iteration"] == 3


def test_resume_drops_a_cut_metrics_line_and_sweeps_stale_temporaries(tmp_path, small_tree, capsys):
    """A kill mid-append leaves a cut last line in metrics.jsonl, a kill mid-checkpoint a hidden .partial."""
    run = tmp_path / "log" / "run"
    args = cli_args(small_tree, tmp_path / "log")
    assert train_cli.main(args) == 0
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"iteration": 3, "loss": 1.2')
    stale = run / ".checkpoint.pt.x7kq2m0a.partial"
    stale.write_bytes(b"half a checkpoint")
    capsys.readouterr()
    assert train_cli.main(args + ["--resume", "--set", "max_iters=3"]) == 0
    err = capsys.readouterr().err
    assert f"{run / 'metrics.jsonl'}: line 3 is not a complete JSON record" in err and "dropped" in err
    assert f"removed 1 temporary file(s) that a killed write left in {run}: {stale.name}" in err
    assert not stale.exists()
    logged = [json.loads(line)["iteration"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3]


def test_a_second_run_into_a_busy_folder_is_refused_and_a_killed_ones_lock_is_not(tmp_path, small_tree, capsys):
    import signal
    import socket

    from test_locks import hold_lock

    run = tmp_path / "log" / "run"
    holder = hold_lock(run)
    try:
        started = time.perf_counter()
        assert train_cli.main(cli_args(small_tree, tmp_path / "log")) == 1
        assert time.perf_counter() - started < 5
        err = one_error_line(capsys.readouterr().err)
        assert f"{run} is in use by process {holder.pid} on host {socket.gethostname()}" in err
        assert not (run / "config.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert train_cli.main(cli_args(small_tree, tmp_path / "log", "max_iters=1")) == 0
    holder = hold_lock(run)  # killed while holding the lock of a run with a checkpoint
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert train_cli.main(cli_args(small_tree, tmp_path / "log") + ["--resume", "--set", "max_iters=2"]) == 0
    assert torch.load(run / "sphereface4_8.pt", weights_only=True)["iteration"] == 2


@pytest.mark.slow
def test_sigkill_then_resume_ends_bit_identical(tmp_path, aligned_tree):
    import signal

    args = [sys.executable, str(ROOT / "code/train.py"), "--config", str(ROOT / "code/configs/toy.yaml"),
            "--logdir", str(tmp_path), "--no_progress", "--set", f"dataset.train={aligned_tree}",
            "--set", "model_name=sphereface4", "--set", "emb_dim=32", "--set", "batch_size=8",
            "--set", "num_workers=1", "--set", "max_iters=40", "--set", "checkpoint_every=4",
            "--set", "deterministic=true"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(args + ["--run_name", "full"], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(args + ["--run_name", "killed"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.time() + 120

    def saved_iteration():  # the initial state (iteration 0) is saved too
        return torch.load(state, weights_only=True)["iteration"] if state.exists() else 0

    while saved_iteration() == 0 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(state, weights_only=True)["iteration"]
    assert 0 < killed_at < 40
    resumed = subprocess.run(args + ["--run_name", "killed", "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(tmp_path / "full" / "sphereface4_32.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "sphereface4_32.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["centers"], b["centers"])
    metrics = [json.loads(l)["iteration"] for l in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert metrics == sorted(set(metrics)) and metrics[-1] == 40  # no duplicated log lines after the resume


@pytest.mark.parametrize("every_step", [False, True])
def test_divergence_between_log_points_names_its_step(tmp_path, small_tree, capsys, every_step):
    """lr 1e30: iteration 1 leaves huge weights, whose loss at iteration 2 is NaN. Checked at log points
    only (every 4 iterations), the run stops at iteration 4 and still names iteration 2 and the checkpoint
    of iteration 0; with check_finite_every_step it stops at iteration 2 itself."""
    run = tmp_path / "log" / "run"
    args = cli_args(small_tree, tmp_path / "log", "lr=1e30", "max_iters=8", "log_every=4", "checkpoint_every=4",
                    f"check_finite_every_step={str(every_step).lower()}")
    assert train_cli.main(args) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "loss is not finite at iteration 2 (cross-entropy" in err
    assert ("found at iteration 4, the next check" in err) != every_step
    assert f"The last good checkpoint is {run / 'checkpoint.pt'} (iteration 0" in err
    assert all_finite(torch.load(run / "checkpoint.pt", weights_only=True)["model"])
    assert not (run / "sphereface4_8.pt").exists()
    assert not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text()  # nothing logged


# ------------------------------------------------------------------ resume records what ran

def test_resume_with_set_rewrites_config_and_records_the_change(tmp_path, small_tree, caplog):
    from uniformface.base.config import HISTORY_FILE, read_history

    run = tmp_path / "log" / "run"
    args = cli_args(small_tree, tmp_path / "log")
    assert train_cli.main(args) == 0
    assert not (run / HISTORY_FILE).exists()  # a run never resumed has no history
    assert train_cli.main(args + ["--resume", "--set", "lr=0.01", "--set", "max_iters=3"]) == 0
    assert "note: --resume: settings changed from iteration 2: lr 0.05 -> 0.01, max_iters 2 -> 3" in caplog.text
    saved = load_config(run / "config.yaml")
    assert (saved.lr, saved.max_iters) == (0.01, 3)  # the settings in force at the end
    assert torch.load(run / "checkpoint.pt", weights_only=True)["config"]["lr"] == 0.01
    (entry,) = read_history(run)
    assert entry["iteration"] == 2 and entry["changed"] == {"lr": {"from": 0.05, "to": 0.01},
                                                            "max_iters": {"from": 2, "to": 3}}
    # resumed again with the same settings: nothing new to record; with another, a second entry
    assert train_cli.main(args + ["--resume", "--set", "lr=0.01", "--set", "max_iters=3"]) == 0
    assert len(read_history(run)) == 1
    assert train_cli.main(args + ["--resume", "--set", "max_iters=4"]) == 0  # args' own lr=0.05 is in force again
    history = read_history(run)
    assert [e["iteration"] for e in history] == [2, 3]
    assert history[1]["changed"] == {"lr": {"from": 0.01, "to": 0.05}, "max_iters": {"from": 3, "to": 4}}
    assert load_config(run / "config.yaml").lr == 0.05


@pytest.mark.parametrize("left", ["nothing", "config only", "config and a killed write"])
def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it(tmp_path, small_tree, caplog, left):
    """A job script that always passes --resume, killed before the run's first checkpoint was written."""
    run = tmp_path / "log" / "run"
    args = cli_args(small_tree, tmp_path / "log")
    if left != "nothing":
        from uniformface.base.config import save_config

        run.mkdir(parents=True)
        save_config(load_config(TOY, args[args.index("--set"):][1::2]), run / "config.yaml")  # as train.py writes it
    if left == "config and a killed write":
        (run / ".checkpoint.pt.0a1b2c3d.partial").write_bytes(b"half")
        (run / "metrics.jsonl").write_text('{"iteration": 1, "loss": 2.')
    assert train_cli.main(args + ["--resume"]) == 0
    assert caplog.text.count("holds no checkpoint yet; starting the run from iteration 0") == 1
    assert f"{run}" in caplog.text
    fresh = tmp_path / "fresh"
    assert train_cli.main(cli_args(small_tree, fresh)) == 0
    a = torch.load(run / "sphereface4_8.pt", weights_only=True)
    b = torch.load(fresh / "run" / "sphereface4_8.pt", weights_only=True)
    assert a["iteration"] == 2 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [json.loads(l)["iteration"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_val_targets_missing_or_damaged_are_named_before_training(tmp_path, small_tree, capsys):
    """A val_targets file that is not there: exit 2 before any work (no folder made); one that is not an
    insightface .bin: exit 1 naming it before the first step (no checkpoint written)."""
    damaged = tmp_path / "cfp_fp.bin"
    args = cli_args(small_tree, tmp_path / "log", "eval_every=1", "dataset.test=null", "dataset.pairs=null",
                    f"val_targets=[{damaged}]")
    assert train_cli.main(args) == 2
    one_line_error(capsys.readouterr().err, "train.py: error: ", f"key 'val_targets': no such file {damaged}")
    assert not (tmp_path / "log").exists()
    damaged.write_bytes(b"not a pickle")
    assert train_cli.main(args) == 1
    one_line_error(capsys.readouterr().err, "train.py: error: ", f"{damaged}: not a readable insightface .bin pickle")
    assert not (tmp_path / "log" / "run" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_under_torchrun_only_rank_0_reads_and_scores_the_val_targets(tmp_path, small_tree):
    """Two gloo ranks: the set is read and decoded once (rank 0's note, not rank 1's), each evaluation is one
    metrics.jsonl line, and the last figure is what test.py --bin gives the final weights."""
    import socket

    from conftest import load_script
    from conftest import write_bin_set

    lfw = write_bin_set(tmp_path / "lfw.bin", n_pairs=10)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = cli_args(small_tree, tmp_path / "log", "eval_every=1", "dataset.test=null", "dataset.pairs=null",
                    f"val_targets=[{lfw}]")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                           str(ROOT / "code" / "train.py"), *args], capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("val_targets: lfw (10 pairs) decoded once") == 1, proc.stderr[-3000:]
    run = tmp_path / "log" / "run"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [line for line in lines if "val/lfw" in line]
    assert [line["iteration"] for line in evals] == [1, 2]
    assert load_script("test").main(["--model_path", str(run / "sphereface4_8.pt"), "--bin", str(lfw), "--workers",
                                     "0", "--device", "cpu", "--no_progress"]) == 0
    assert evals[-1]["val/lfw"] == json.loads((run / "lfw_results.json").read_text())["bin"]["lfw"]["accuracy_mean"]
