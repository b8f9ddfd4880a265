"""trainer.py: the run folder, bit-identical resume, the images skipped while training, evaluations during
training (callbacks), the centers' stability, a loop that reads nothing back from the device between log
points, and two ranks. Its parts have their own tests (test_build.py, test_step.py, test_checkpoint.py,
test_divergence.py, test_metrics.py, test_training_set.py); train.py's own tests (its faults in training,
resume from the command line) are in test_train.py."""
import itertools
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from conftest import denormals_flushed
from uniformface.base.config import load_config
from uniformface.train.trainer import Trainer, train

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(train_dir, **extra):
    overrides = [f"dataset.train={train_dir}", "dataset.exclude_identities=[]", "model_name=sphereface4",
                 "emb_dim=32", "batch_size=8", "num_workers=0", "max_iters=6", "checkpoint_every=3",
                 "log_every=2", "milestones=[4]", "warmup_iters=2", "lr=0.05", "device=cpu", "deterministic=true"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_config(ROOT / "code" / "configs" / "toy.yaml", overrides)


def test_run_folder_outputs(tmp_path, aligned_tree, device):
    cfg = tiny_config(aligned_tree, device=device.type)  # on CUDA with the config's bf16 autocast + channels_last
    torch.set_flush_denormal(False)
    weights = train(cfg, tmp_path / "run", progress=False)
    assert denormals_flushed() == (device.type == "cpu")  # flushed on a CPU only
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
@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_evaluators_run_every_eval_every_iterations_and_their_figures_are_logged(tmp_path, aligned_tree):
    """Evaluation during training is a callback: called with the backbone (in eval mode) and the iteration
    every eval_every iterations and at the last one (6 is no multiple of 4), its figures logged by their
    metrics.jsonl keys and in TensorBoard (a key holding '/' as it is, else its first '_' as '/'); training
    goes on in train mode."""
    calls = []

    def weight_norm(backbone, iteration):
        calls.append((iteration, backbone.training))
        return {"val/weight_norm": float(sum(p.detach().double().pow(2).sum() for p in backbone.parameters())),
                "toy_iteration": iteration / 10}

    run = tmp_path / "run"
    trainer = Trainer(tiny_config(aligned_tree, eval_every=4), run, progress=False, evaluators=[weight_norm])
    try:
        weights = trainer.fit()
        assert trainer.model.backbone.training
    finally:
        trainer.close()
    assert calls == [(4, False), (6, False)]
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [l for l in lines if "val/weight_norm" in l]
    assert [sorted(l) for l in evals] == [["iteration", "toy_iteration", "val/weight_norm"]] * 2
    assert [(l["iteration"], l["toy_iteration"]) for l in evals] == [(4, 0.4), (6, 0.6)]
    final = torch.load(weights, weights_only=True)["model"]  # the weights of iteration 6
    assert evals[1]["val/weight_norm"] == float(sum(v.double().pow(2).sum() for v in final.values()
                                                    if v.is_floating_point()))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    for tag, key in (("val/weight_norm", "val/weight_norm"), ("toy/iteration", "toy_iteration")):
        assert [(e.step, e.value) for e in events.Scalars(tag)] == \
               [(l["iteration"], pytest.approx(l[key], rel=1e-6)) for l in evals], tag


@pytest.mark.slow
@pytest.mark.parametrize("beta", [0.001, 0.01, 0.1])
@pytest.mark.parametrize("center_mode", ["feature", "weight"])
def test_center_update_rates_that_nan_the_earlier_port_stay_finite(tmp_path, tree_factory, center_mode, beta):
    """The earlier port went NaN at beta 0.01 and 0.1 (head weights as centers): 200 iterations each.
    bench/bench_stability.py runs the same grid and prints the figures. Each run in a fresh process, as
    train.py's: there the trainer's denormal flush reaches every thread (docs/DESIGN.md §5.1); in this test
    process, whose threads exist already, it would not, and the run takes several times longer."""
    import subprocess

    tree = tree_factory(tmp_path / "train", n_classes=8, per_class=4)
    run = ("import json, sys; from common import stability_run; "
           "print(json.dumps(stability_run(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))))")
    child = subprocess.run([sys.executable, "-c", run, str(tree), str(tmp_path / center_mode), center_mode, str(beta)],
                           capture_output=True, text=True, cwd=ROOT / "bench", timeout=600,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), str(ROOT / "code")])})
    assert child.returncode == 0, child.stderr
    lines = json.loads(child.stdout.splitlines()[-1])
    assert len(lines) == 20
    for line in lines:
        for key in ("loss", "cross_entropy", "uniform_loss", "mean_min_center_distance"):
            assert math.isfinite(line[key]), line
    assert lines[-1]["uniform_loss"] > 0


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
@pytest.mark.slow
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


# ------------------------------------------------------------------ two ranks
GATHER_SETTINGS = {"feature-centers": {}, "weight-batch": {"center_mode": "weight", "compute_in_batch": "true"}}


def _two_rank_worker(rank, init_file, tree, out_dir):
    """Rank `rank` of 2 gloo processes, as torchrun starts them: two steps of a Trainer per setting, with
    each step's all_gathers recorded; then a run of 2 iterations evaluated at each, with the calls of its
    evaluator and the barriers of its fit() recorded."""
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
        evaluated, barriers, real_barrier = [], [], dist.barrier

        def evaluate(backbone, iteration):
            evaluated.append(iteration)
            return {"val/rank": float(rank)}

        def counted_barrier(*args, **kwargs):
            barriers.append(len(evaluated))
            return real_barrier(*args, **kwargs)

        cfg = tiny_config(tree, max_iters=2, eval_every=1, log_every=1, checkpoint_every=2)
        trainer = Trainer(cfg, Path(out_dir) / "evaluated", progress=False, evaluators=[evaluate])
        dist.barrier = counted_barrier
        try:
            trainer.fit()
        finally:
            dist.barrier = real_barrier
            trainer.close()
        torch.save({"steps": steps, "evaluated": evaluated, "barriers": barriers},
                   Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        distributed.teardown()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """What `_two_rank_worker` recorded on each rank (one spawn for the tests below), and its folder."""
    import torch.multiprocessing as mp

    from conftest import write_aligned_tree

    out = tmp_path_factory.mktemp("two_ranks")
    tree = write_aligned_tree(out / "train")
    mp.spawn(_two_rank_worker, args=(str(out / "init"), str(tree), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{rank}.pt") for rank in range(2)], out, tree


@pytest.mark.slow
def test_a_step_on_two_ranks_gathers_the_batch_once(two_ranks):
    """Under torchrun the step's loss (its centers) and Eq. 7 after the optimizer step both need the global
    batch: each rank sends its labels (with their count) and its features once a step, not once for each."""
    from test_centers import one_exchange

    records, _, tree = two_ranks
    per_rank_batch = tiny_config(tree).batch_size // 2
    for rank, record in enumerate(records):
        for name in GATHER_SETTINGS:
            assert record["steps"][name] == [one_exchange(per_rank_batch, 32)] * 2, (rank, name, record["steps"])


def test_evaluators_run_on_the_main_rank_while_the_others_wait_at_one_barrier(two_ranks):
    """Under torchrun only rank 0 evaluates (and logs); every rank passes one barrier per evaluation, then
    the one that ends fit()."""
    (main, other), out, _ = two_ranks
    assert main["evaluated"] == [1, 2] and other["evaluated"] == []
    assert main["barriers"] == [1, 2, 2] and other["barriers"] == [0, 0, 0]
    lines = [json.loads(l) for l in (out / "evaluated" / "metrics.jsonl").read_text().splitlines()]
    assert [(l["iteration"], l["val/rank"]) for l in lines if "val/rank" in l] == [(1, 0.0), (2, 0.0)]
