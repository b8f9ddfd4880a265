"""trainer.py: the learning-rate schedule, the run folder, bit-identical resume, the checks made when the
training set is opened, the centers' stability, and a steady-state step that reads nothing back from the
device. train.py's own tests (its faults in training, resume from the command line) are in test_train.py."""
import itertools
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from uniformface.base.config import load_config
from uniformface.train.trainer import Trainer, learning_rate, train

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


def test_lfw_evaluation_during_training_is_logged(tmp_path, aligned_tree, lfw_tree):
    root, pairs = lfw_tree
    train(tiny_config(aligned_tree, eval_every=3, **{"dataset.test": root, "dataset.pairs": pairs}),
          tmp_path / "run", progress=False)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [l for l in lines if "lfw_accuracy" in l]
    assert [l["iteration"] for l in evals] == [3, 6] and all(0 <= l["lfw_accuracy"] <= 1 for l in evals)


@pytest.mark.slow
@pytest.mark.parametrize("beta", [0.001, 0.01, 0.1])
@pytest.mark.parametrize("center_mode", ["feature", "weight"])
def test_center_update_rates_that_nan_the_earlier_port_stay_finite(tmp_path, tree_factory, center_mode, beta):
    """The earlier port went NaN at beta 0.01 and 0.1 (head weights as centers): 200 iterations each.
    bench/bench_stability.py runs the same grid and prints the figures."""
    from common import stability_run

    tree = tree_factory(tmp_path / "train", n_classes=8, per_class=4)
    lines = stability_run(tree, tmp_path / center_mode, center_mode, beta=beta, iterations=200)
    assert len(lines) == 20
    for line in lines:
        for key in ("loss", "cross_entropy", "uniform_loss", "mean_min_center_distance"):
            assert math.isfinite(line[key]), line
    assert lines[-1]["uniform_loss"] > 0


def test_caffe_parameter_multipliers():
    """sphereface_model.prototxt: conv/fc biases lr_mult 2, decay_mult 0; weights and PReLU slopes 1, 1."""
    from uniformface.nn.models import build_model
    from uniformface.train.trainer import parameter_groups

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


def test_default_solver_steps_are_sgd_with_momentum_and_decay_in_float64(tmp_path, aligned_tree):
    """The solver defaults (docs/DESIGN.md §5.2, the official solver): lr 0.1 x 0.1 at 16,000 and 24,000, and
    two steps of a default-config Trainer move every parameter as SGD with momentum 0.9 and weight decay 5e-4
    (biases: lr x 2, no decay), recomputed in float64 from each step's gradients."""
    overrides = [f"dataset.train={aligned_tree}", "dataset.exclude_identities=[]", "model_name=sphereface4",
                 "emb_dim=16", "batch_size=8", "num_workers=0", "device=cpu", "deterministic=true"]
    cfg = load_config(None, overrides)
    for iteration, drops in ((0, 0), (15999, 0), (16000, 1), (23999, 1), (24000, 2), (27999, 2)):
        assert learning_rate(cfg, iteration) == pytest.approx(0.1 * 0.1 ** drops, rel=1e-12), iteration
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    try:
        params = dict(trainer.model.named_parameters())
        biases = {name for name in params if name.endswith(".bias")}
        # the head renormalises its rows in place at each training forward: its step starts from those
        before = {}
        trainer.model.head.register_forward_hook(
            lambda mod, inputs, out: before.update({"head.weight": mod.weight.detach().double().clone()}))
        momentum = {}
        batches = iter(trainer._loader())
        for _ in range(2):
            before.update({name: p.detach().double().clone() for name, p in params.items() if name != "head.weight"})
            images, labels, _ = next(batches)
            trainer.step(images, labels)
            for name, p in params.items():
                lr, decay = (0.2, 0.0) if name in biases else (0.1, 5e-4)
                d_p = p.grad.double() + decay * before[name]
                momentum[name] = d_p if name not in momentum else 0.9 * momentum[name] + d_p
                expected = before[name] - lr * momentum[name]
                torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-7, msg=name)
    finally:
        trainer.close()


def test_training_labels_are_checked_once_when_the_set_is_opened(tmp_path, small_tree, monkeypatch):
    from uniformface.data import ImageFolderTrainSet

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


# ------------------------------------------------------------------ one exchange of the batch a step
GATHER_SETTINGS = {"feature-centers": {}, "weight-batch": {"center_mode": "weight", "compute_in_batch": "true"}}


def _gather_counting_worker(rank, init_file, tree, out_dir):
    """Rank `rank` of 2 gloo processes, as torchrun starts them: two steps of a Trainer per setting, with
    each step's all_gathers recorded."""
    import torch.distributed as dist

    from test_centers import counted_gathers
    from uniformface.base import distributed
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        steps = {}
        for name, setting in GATHER_SETTINGS.items():
            trainer = Trainer(tiny_config(tree, **setting), Path(out_dir) / name, progress=False)
            try:
                steps[name] = []
                for images, labels, _ in itertools.islice(iter(trainer._loader()), 2):
                    with counted_gathers() as calls:
                        trainer.step(images, labels)
                    steps[name].append(calls)
            finally:
                trainer.close()
        torch.save(steps, Path(out_dir) / f"gathers_rank{rank}.pt")
        dist.barrier()
    finally:
        distributed.teardown()


def test_a_step_on_two_ranks_gathers_the_batch_once(tmp_path, aligned_tree):
    """Under torchrun the step's loss (its centers) and Eq. 7 after the optimizer step both need the global
    batch: each rank sends its labels (with their count) and its features once a step, not once for each."""
    import torch.multiprocessing as mp

    from test_centers import one_exchange

    mp.spawn(_gather_counting_worker, args=(str(tmp_path / "init"), str(aligned_tree), str(tmp_path)), nprocs=2,
             join=True)
    per_rank_batch = tiny_config(aligned_tree).batch_size // 2
    for rank in range(2):
        steps = torch.load(tmp_path / f"gathers_rank{rank}.pt")
        for name in GATHER_SETTINGS:
            assert steps[name] == [one_exchange(per_rank_batch, 32)] * 2, (rank, name, steps[name])


@pytest.mark.parametrize("center_mode", ["feature", "weight"])
def test_log_point_figures_are_the_separate_sweeps_to_the_bit(tmp_path, aligned_tree, center_mode):
    """The log point computes the centers' distance and angle in one sweep (and, when the centers are the
    head's weights, their angle once): the figures are those of the separate functions."""
    from uniformface.nn.centers import ClassCenters, mean_min_angle_tensor, mean_min_distance

    trainer = Trainer(tiny_config(aligned_tree, center_mode=center_mode, emb_dim=8), tmp_path / "run", progress=False)
    try:
        g = torch.Generator().manual_seed(4)
        norms = torch.tensor([[0.5], [3.0], [1.0], [8.0]])  # unequal: nearest by distance is not by angle
        with torch.no_grad():
            trainer.model.head.weight.copy_(torch.randn(4, 8, generator=g) * norms)
            if isinstance(trainer.centers, ClassCenters):
                trainer.centers.centers.copy_(torch.randn(4, 8, generator=g) * norms.flip(0))
                trainer.centers.initialized.fill_(True)
        centers = trainer._center_matrix()
        figures = trainer._figures()
        assert torch.equal(figures["mean_min_center_distance"], mean_min_distance(centers))
        assert torch.equal(figures["mean_min_center_angle"], mean_min_angle_tensor(centers))
        assert torch.equal(figures["mean_min_weight_angle"], mean_min_angle_tensor(trainer.model.head.weight.detach()))
    finally:
        trainer.close()
