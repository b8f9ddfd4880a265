"""torchrun with 2 gloo processes on CPU must train exactly what one process trains with the same
global batch (same samples, averaged gradients, identical class centers), up to float rounding."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train(tree, logdir, nproc):
    args = ["--config", str(ROOT / "code/configs/toy.yaml"), "--logdir", str(logdir), "--run_name", "r",
            "--no_progress", "--set", f"dataset.train={tree}", "--set", "model_name=sphereface4", "--set", "emb_dim=32",
            "--set", "batch_size=8", "--set", "num_workers=0", "--set", "max_iters=4", "--set", "checkpoint_every=2",
            "--set", "warmup_iters=0", "--set", "lr=0.05", "--set", "beta=0.5"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if nproc == 1:
        command = [sys.executable, str(ROOT / "code/train.py"), *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   f"--master_port={free_port()}", str(ROOT / "code/train.py"), *args]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the collectives are PyTorch's current ones (torch.distributed.nn.functional.all_gather warned on every rank)
    deprecated = [line for line in proc.stderr.splitlines() if "deprecated" in line and "torch.distributed" in line]
    assert not deprecated, deprecated
    return torch.load(logdir / "r" / "checkpoint.pt", weights_only=True)


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path, tree_factory):
    tree = tree_factory(tmp_path / "train", n_classes=5, per_class=6)
    single = run_train(tree, tmp_path / "one", 1)
    double = run_train(tree, tmp_path / "two", 2)
    assert single["iteration"] == double["iteration"] == 4
    for key, value in single["model"].items():
        torch.testing.assert_close(double["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    for key, value in single["centers"].items():
        if value.is_floating_point():
            torch.testing.assert_close(double["centers"][key], value, rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(double["centers"][key], value), key
    # only rank 0 wrote: one event file, one metrics log
    assert len(list((tmp_path / "two" / "r").glob("events.out.tfevents.*"))) == 1
