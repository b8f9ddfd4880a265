import json
import math
from pathlib import Path

import pytest
import torch

from uniformface.config import load_config
from uniformface.trainer import Trainer, TrainingDiverged, learning_rate, train

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(train_dir, **extra):
    overrides = [f"dataset.train={train_dir}", "dataset.exclude_identities=[]", "model_name=sphereface4",
                 "emb_dim=32", "batch_size=8", "num_workers=0", "max_iters=6", "checkpoint_every=3",
                 "log_every=2", "milestones=[4]", "warmup_iters=2", "lr=0.05", "device=cpu", "deterministic=true"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config(ROOT / "code" / "configs" / "toy.yaml", overrides)


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
                "images_per_s"):
        assert all(math.isfinite(l[key]) for l in lines), key
    assert lines[-1]["uniform_loss"] > 0
    events = list(run.glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6]


def test_resume_is_bit_identical(tmp_path, aligned_tree):
    cfg = tiny_config(aligned_tree)
    train(cfg, tmp_path / "full", progress=False)
    half = tiny_config(aligned_tree, max_iters=3)
    train(half, tmp_path / "split", progress=False)
    # continue with the full length, reading the state back
    trainer = Trainer(cfg, tmp_path / "split", resume=True, progress=False)
    assert trainer.iteration == 3
    trainer.fit()
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)
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


def test_nan_loss_stops_with_message_and_keeps_checkpoint(tmp_path, aligned_tree):
    cfg = tiny_config(aligned_tree, lr=1e30, warmup_iters=3, grad_clip=0, checkpoint_every=1, max_iters=50)
    with pytest.raises(TrainingDiverged, match="not finite") as err:
        train(cfg, tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert str(tmp_path / "run" / "checkpoint.pt") in str(err.value)
    assert 1 <= state["iteration"] < 50  # the last good state is kept, not overwritten by the NaN step
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_corrupt_images_are_skipped_and_counted_in_logs(tmp_path, aligned_tree):
    for victim in ("0000000/000.jpg", "0000002/003.jpg"):
        (aligned_tree / victim).write_bytes(b"\xff\xd8 truncated")
    train(tiny_config(aligned_tree, max_iters=9), tmp_path / "run", progress=False)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # 24 images, batch 8 -> 3 iterations an epoch: 9 iterations read each image 3 times
    assert lines[-1]["broken_images"] == 6


def test_lfw_evaluation_during_training_is_logged(tmp_path, aligned_tree, lfw_tree):
    root, pairs = lfw_tree
    train(tiny_config(aligned_tree, eval_every=3, **{"dataset.test": root, "dataset.pairs": pairs}),
          tmp_path / "run", progress=False)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [l for l in lines if "lfw_accuracy" in l]
    assert [l["iteration"] for l in evals] == [3, 6] and all(0 <= l["lfw_accuracy"] <= 1 for l in evals)


@pytest.mark.slow
def test_sigkill_then_resume_ends_bit_identical(tmp_path, aligned_tree):
    import os
    import signal
    import subprocess
    import sys
    import time

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
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(state, weights_only=False)["iteration"]
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
