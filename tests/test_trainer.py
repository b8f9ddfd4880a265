import json
import math
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
from conftest import write_aligned_tree
from hostile import one_line_error
from uniformface.config import load_config
from uniformface.trainer import Trainer, learning_rate, train

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "code" / "configs" / "toy.yaml")


def tiny_config(train_dir, **extra):
    overrides = [f"dataset.train={train_dir}", "dataset.exclude_identities=[]", "model_name=sphereface4",
                 "emb_dim=32", "batch_size=8", "num_workers=0", "max_iters=6", "checkpoint_every=3",
                 "log_every=2", "milestones=[4]", "warmup_iters=2", "lr=0.05", "device=cpu", "deterministic=true"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config(ROOT / "code" / "configs" / "toy.yaml", overrides)


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


@pytest.fixture
def small_tree(tmp_path):
    return write_aligned_tree(tmp_path / "train", n_classes=2, per_class=4)


def test_learning_rate_schedule_warmup_and_steps():
    cfg = load_config(None, ["lr=0.1", "milestones=[16000, 24000]", "warmup_iters=0"])
    assert learning_rate(cfg, 0) == 0.1 and learning_rate(cfg, 15999) == 0.1
    assert math.isclose(learning_rate(cfg, 16000), 0.01) and math.isclose(learning_rate(cfg, 24000), 0.001)
    cfg = load_config(None, ["warmup_iters=10"])
    assert math.isclose(learning_rate(cfg, 0), 0.01) and math.isclose(learning_rate(cfg, 9), 0.1)


def test_run_folder_outputs(tmp_path, aligned_tree, device):
    cfg = tiny_config(aligned_tree, device=device.type)  # on CUDA with the config's bf16 autocast + channels_last
    weights = train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert weights == run / "sphereface4_32.pt"
    payload = torch.load(weights, weights_only=True)
    assert payload["spec"] == {"model_name": "sphereface4", "emb_dim": 32, "input_size": [112, 96]}
    assert payload["centers"].shape == (4, 32) and bool(payload["centers_initialized"].all())
    assert load_config(run / "config.yaml") == cfg  # the resolved config is kept beside the checkpoints
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["iteration"] for l in lines] == [2, 4, 6]
    for key in ("loss", "cross_entropy", "uniform_loss", "accuracy", "lambda", "lr", "mean_min_center_distance",
                "mean_min_center_angle", "mean_min_weight_angle", "images_per_s"):
        assert all(math.isfinite(l[key]) for l in lines), key
    assert lines[-1]["uniform_loss"] > 0
    events = list(run.glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6]


@pytest.mark.parametrize("reading", [dict(), dict(normalize_centers="false", uniform_reduction="pairs",
                                                    compute_in_batch="true")], ids=["sphere-center-all", "raw-pairs-batch"])
def test_resume_is_bit_identical(tmp_path, aligned_tree, reading):
    cfg = tiny_config(aligned_tree, **reading)
    train(cfg, tmp_path / "full", progress=False)
    half = tiny_config(aligned_tree, max_iters=3, **reading)
    train(half, tmp_path / "split", progress=False)
    # continue with the full length, reading the state back
    trainer = Trainer(cfg, tmp_path / "split", resume=True, progress=False)
    assert trainer.iteration == 3
    trainer.fit()
    # the checkpoint holds tensors and plain values only, RNG states included
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["centers"]:
        assert torch.equal(a["centers"][key], b["centers"][key]), key


def test_image_size_must_match_input_size(tmp_path, tree_factory):
    tree = tree_factory(tmp_path / "square", size=(112, 112))
    with pytest.raises(ValueError, match=r"are 112x112 but input_size is \[112, 96\]"):
        Trainer(tiny_config(tree), tmp_path / "run", progress=False)
    Trainer(tiny_config(tree, input_size="[112, 112]"), tmp_path / "run2", progress=False)  # accepted


def test_single_class_is_refused(tmp_path, tree_factory):
    tree = tree_factory(tmp_path / "one", n_classes=1, per_class=10)
    with pytest.raises(ValueError, match="1 class"):
        Trainer(tiny_config(tree), tmp_path / "run", progress=False)


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


def test_corrupt_images_are_skipped_counted_in_logs_and_named_on_the_console(tmp_path, aligned_tree, caplog):
    for victim in ("0000000/000.jpg", "0000002/003.jpg"):
        (aligned_tree / victim).write_bytes(b"\xff\xd8 truncated")
    train(tiny_config(aligned_tree, max_iters=9), tmp_path / "run", progress=False)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # 24 images, batch 8 -> 3 iterations an epoch: 9 iterations read each image 3 times
    assert lines[-1]["broken_images"] == 6
    err = caplog.text  # the library's log, which a script shows on the console (test_cli.py)
    assert f"2 of the 24 training images in {aligned_tree} cannot be read and are skipped" in err
    assert str(aligned_tree / "0000000/000.jpg") in err and str(aligned_tree / "0000002/003.jpg") in err


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


def run_script(args, timeout=120, **env):
    """code/train.py as a subprocess (for what must not hang, or needs its own environment)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "code" / "train.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1", **env))
    return proc, time.perf_counter() - started


def test_a_training_set_of_undecodable_files_fails_at_once(tmp_path, small_tree):
    """It used to spin forever on empty batches."""
    for path in small_tree.glob("*/*.jpg"):
        path.write_bytes(b"not an image at all")
    proc, _ = run_script(cli_args(small_tree, tmp_path / "log"), timeout=60)
    assert proc.returncode == 1
    err = one_error_line(proc.stderr)
    assert f"training set {small_tree}: none of its 8 image files can be read (8 unreadable" in err


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


def test_disk_full_while_writing_a_checkpoint(tmp_path, small_tree, capsys, monkeypatch):
    """The disk fills up half-way through the checkpoint of iteration 1: one line naming the file and the
    fix, the checkpoint before intact, no temporary left; after space is freed, --resume finishes."""
    import errno

    real_save, calls = torch.save, []

    def save_until_full(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            handle.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    run = tmp_path / "log" / "run"
    args = cli_args(small_tree, tmp_path / "log")
    assert train_cli.main(args) == 1
    err = one_error_line(capsys.readouterr().err)
    assert f"cannot write {run / 'checkpoint.pt'} (No space left on device)" in err
    assert f"the checkpoint {run / 'checkpoint.pt'} of iteration 0 is intact: free space on that disk" in err
    assert "--resume" in err
    assert torch.load(run / "checkpoint.pt", weights_only=True)["iteration"] == 0
    assert not list(run.glob(".*.partial")) and not (run / "sphereface4_8.pt").exists()
    monkeypatch.setattr(torch, "save", real_save)
    assert train_cli.main(args + ["--resume"]) == 0
    assert torch.load(run / "sphereface4_8.pt", weights_only=True)["iteration"] == 2


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

    from test_checkpoint import hold_lock

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


def test_lfw_evaluation_during_training_is_logged(tmp_path, aligned_tree, lfw_tree):
    root, pairs = lfw_tree
    train(tiny_config(aligned_tree, eval_every=3, **{"dataset.test": root, "dataset.pairs": pairs}),
          tmp_path / "run", progress=False)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [l for l in lines if "lfw_accuracy" in l]
    assert [l["iteration"] for l in evals] == [3, 6] and all(0 <= l["lfw_accuracy"] <= 1 for l in evals)


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


@pytest.mark.slow
@pytest.mark.parametrize("beta", [0.001, 0.01, 0.1])
@pytest.mark.parametrize("center_mode", ["feature", "weight"])
def test_center_update_rates_that_nan_the_earlier_port_stay_finite(tmp_path, tree_factory, center_mode, beta):
    """The earlier port went NaN at beta 0.01 and 0.1 (head weights as centers): 200 iterations each.
    bench/bench_stability.py runs the same grid and prints the figures."""
    from stability import stability_run

    tree = tree_factory(tmp_path / "train", n_classes=8, per_class=4)
    lines = stability_run(tree, tmp_path / center_mode, center_mode, beta=beta, iterations=200)
    assert len(lines) == 20
    for line in lines:
        for key in ("loss", "cross_entropy", "uniform_loss", "mean_min_center_distance"):
            assert math.isfinite(line[key]), line
    assert lines[-1]["uniform_loss"] > 0


def test_caffe_parameter_multipliers():
    """sphereface_model.prototxt: conv/fc biases lr_mult 2, decay_mult 0; weights and PReLU slopes 1, 1."""
    from uniformface.models import build_model
    from uniformface.trainer import parameter_groups

    model = build_model("sphereface20")
    groups = parameter_groups(model, 5e-4)
    by_id = {id(p): g for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        g = by_id[id(p)]
        expected = (2.0, 0.0) if name.endswith(".bias") else (1.0, 5e-4)
        assert (g["lr_mult"], g["weight_decay"]) == expected, name
    assert sum(p.numel() for g in groups for p in g["params"]) == 22_666_944
    n_bias = sum(p.numel() for g in groups if g["lr_mult"] == 2 for p in g["params"])
    assert n_bias == 64 + 128 + 256 + 512 + 512  # four stage convs + fc5


# ------------------------------------------------------------------ resume records what ran

def test_resume_with_set_rewrites_config_and_records_the_change(tmp_path, small_tree, caplog):
    from uniformface.config import HISTORY_FILE, read_history

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
        from uniformface.config import save_config

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


def test_training_labels_are_checked_once_when_the_set_is_opened(tmp_path, small_tree, monkeypatch):
    from uniformface.datasets import ImageFolderTrainSet

    original = ImageFolderTrainSet.label
    monkeypatch.setattr(ImageFolderTrainSet, "label", lambda self, i: 7 if i == 3 else original(self, i))
    with pytest.raises(ValueError, match=r"0000000/003.jpg has label 7, outside \[0, 2\)"):
        Trainer(tiny_config(small_tree), tmp_path / "run", progress=False)


# ------------------------------------------------------------------ the step does not wait on the device

# Every way Python reads a tensor's value back to the host. On a GPU each one waits until everything
# queued before it has run (a synchronisation); the steady-state step must make none.
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "__array__")


def steady_state_trainer(tmp_path, tree, device, **extra):
    """A Trainer with its batches read ahead (the loader's own work is not the step's), logging every 4
    iterations, checkpointing only at the end."""
    import itertools

    cfg = tiny_config(tree, device=device, max_iters=12, log_every=4, checkpoint_every=100, warmup_iters=0,
                      **extra)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    batches = list(itertools.islice(iter(trainer._loader()), 12))
    trainer._loader = lambda: batches
    return trainer


@pytest.mark.parametrize("setting", [{}, {"center_mode": "weight", "compute_in_batch": "true", "regularface": 0.1},
                                     {"normalize_centers": "false", "uniform_reduction": "pairs", "grad_clip": 1}],
                         ids=["default", "weight-batch-regularface", "raw-pairs-clip"])
def test_steady_state_steps_read_nothing_back_from_the_device(tmp_path, aligned_tree, monkeypatch, setting):
    """Counts the reads of tensor values during fit(): none inside any step after the first, none between
    log points, and exactly one at each log point (metrics, divergence record and figures together)."""
    trainer = steady_state_trainer(tmp_path, aligned_tree, "cpu", **setting)
    reads = []

    def counted(name, original):
        def read(self, *args, **kwargs):
            reads.append(name)
            return original(self, *args, **kwargs)
        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name)))
    marks, inside = [], []
    original_step, original_log_point = Trainer.step, Trainer._log_point

    def step(self, images, labels):
        marks.append(len(reads))
        before = len(reads)
        try:
            return original_step(self, images, labels)
        finally:
            inside.append(reads[before:])

    def log_point(self, *args):
        before = len(reads)
        try:
            return original_log_point(self, *args)
        finally:
            log_reads.append(reads[before:])

    log_reads = []
    monkeypatch.setattr(Trainer, "step", step)
    monkeypatch.setattr(Trainer, "_log_point", log_point)
    trainer.fit()
    marks.append(len(reads))
    assert len(marks) == 13
    assert all(calls == [] for calls in inside[1:]), inside  # steps 2..12: no read at all
    per_iteration = {i: reads[marks[i - 1]:marks[i]] for i in range(2, 12)}  # 12 ends with the checkpoint
    for iteration, calls in per_iteration.items():
        assert calls == (["tolist"] if iteration % 4 == 0 else []), (iteration, calls)
    assert log_reads == [["tolist"]] * 3


def test_steady_state_steps_do_not_wait_for_the_gpu(tmp_path, aligned_tree, monkeypatch, cuda):
    """The same on a GPU, where PyTorch itself tells when anything waits for the device: under
    set_sync_debug_mode("error") every synchronising call raises. Armed from the second step (the first
    makes the first allocations and reads the centers' state once) to the end of the loop, except in
    log points and checkpoints, which read the device by design."""
    trainer = steady_state_trainer(tmp_path, aligned_tree, "cuda")
    original_step, original_log_point, original_checkpoint = Trainer.step, Trainer._log_point, Trainer._checkpoint
    state = {"steps": 0, "armed": False}

    def step(self, images, labels):
        state["steps"] += 1
        if state["steps"] == 2:
            state["armed"] = True
            torch.cuda.set_sync_debug_mode("error")
        return original_step(self, images, labels)

    def allowed(original):
        def call(self, *args):
            torch.cuda.set_sync_debug_mode(0)
            try:
                return original(self, *args)
            finally:
                if state["armed"] and self.iteration < self.cfg.max_iters:  # steps follow: armed again
                    torch.cuda.set_sync_debug_mode("error")
        return call

    monkeypatch.setattr(Trainer, "step", step)
    monkeypatch.setattr(Trainer, "_log_point", allowed(original_log_point))
    monkeypatch.setattr(Trainer, "_checkpoint", allowed(original_checkpoint))
    try:
        trainer.fit()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert state["steps"] == 12


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
