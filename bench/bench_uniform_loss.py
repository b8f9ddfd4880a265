"""Uniform loss (UniformFace Eq. 6), forward + backward, at the paper's data scales (d = 512, unit centers as
the sphere reading gives them, the per-center reduction the config uses):

1. for M = 10,572 (CASIA-WebFace), 20,000 and 85,742 (MS1M-refined, the paper's own training data):
   - FLOPs per step (2 x multiply-adds) of the all-rows step, where every one of the M centers gets a
     gradient (4 M^2 d), and of the batch-rows step, where only the U classes of a 512-image batch do
     (`ClassCenters.uniform_loss_of`: 2 M^2 d for the distances + 2 U M d for the gradient);
   - the time of both in this process, and of the batch-rows step sharded over 2 gloo ranks here (one
     thread each; each rank sweeps half of the rows, and must return the single process's loss);
2. peak extra host memory of the batch-rows step on 100,000 x 512 centers, in a fresh subprocess (Linux VmHWM),
   everything the call allocates included. The budget is 2 GB.

    PYTHONPATH=code python bench/bench_uniform_loss.py [--sizes 10572,20000,85742] [--memory-rows 100000]
        [--device cpu] [--shard-ranks 2] [--repeats 2]

On CUDA the batch-rows step takes its Gram products in split bf16 (docs/DESIGN.md §4.6); on a CPU both are exact
float32. The 85,742 row costs minutes on two CPU cores; bench/gpu_check.py measures it on a GPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common import sync
from uniformface.nn.losses import uniform_loss

SIZES = (10_572, 20_000, 85_742)
DIM = 512
BATCH_IMAGES = 512  # config.yaml's global batch


def batch_classes(m: int, images: int = BATCH_IMAGES) -> int:
    """Expected number of distinct classes among `images` drawn uniformly from m classes."""
    return round(m * (1.0 - (1.0 - 1.0 / m) ** images))


def step_flops(m: int, u: int, d: int = DIM) -> tuple[float, float]:
    """(all rows, batch rows) FLOPs of one forward + backward: the Gram products of all pairs (2 M^2 d) and the
    gradient's products, weight @ points, for every row (2 M^2 d) or for the batch's U rows (2 U M d)."""
    return 4.0 * m * m * d, 2.0 * m * m * d + 2.0 * u * m * d


def unit_centers(m: int, d: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(m, d, generator=generator), dim=1).to(device)


def precision_errors(centers: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Relative errors against float64 of Eq. 6 (per-center reduction) and of its gradient through the
    projection onto the sphere (what reaches the features), for exact float32 ("float32") and split-bf16
    Gram products ("split"): {name: (loss error, gradient error)} (docs/DESIGN.md §4.6)."""
    results = {}
    for name, dtype, precision in (("float64", torch.float64, "exact"), ("float32", torch.float32, "exact"),
                                   ("split", torch.float32, "split-bf16")):
        x = centers.to(dtype).clone().requires_grad_()
        loss = uniform_loss(torch.nn.functional.normalize(x, dim=1), reduction="center", precision=precision)
        loss.backward()
        results[name] = (loss.detach().double(), x.grad.double())
    loss, grad = results.pop("float64")
    return {name: (float(abs(value - loss) / loss), float((g - grad).norm() / grad.norm()))
            for name, (value, g) in results.items()}


def all_rows_step(centers: torch.Tensor) -> float:
    """Eq. 6 with every row in the graph (a plain `uniform_loss` call), exact float32."""
    points = centers.clone().requires_grad_()
    loss = uniform_loss(points, reduction="center", batch_size=BATCH_IMAGES)
    loss.backward()
    return loss.item()


def batch_rows_step(centers: torch.Tensor, u: int, precision: str | None = None) -> float:
    """Eq. 6 as `ClassCenters.uniform_loss_of` computes it: the batch's U rows differentiable, the rest
    constants; split-bf16 Gram products on CUDA (the sphere reading), exact elsewhere."""
    if precision is None:
        precision = "split-bf16" if centers.device.type == "cuda" else "exact"
    points = centers[:u].clone().requires_grad_()
    loss = uniform_loss(points, reduction="center", batch_size=BATCH_IMAGES, others=centers[u:], precision=precision)
    loss.backward()
    return loss.item()


def best_seconds(step, repeats: int, device: torch.device) -> tuple[float, float]:
    """(best wall time of `step()` over `repeats`, its loss)."""
    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        value = step()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, value


def _shard_worker(rank: int, world: int, init_file: str, m: int, u: int, repeats: int, out: str) -> None:
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        centers = unit_centers(m, DIM, torch.device("cpu"))
        best, value = float("inf"), float("nan")
        for _ in range(repeats):
            dist.barrier()  # all ranks start together: the step's time is the slowest rank's
            start = time.perf_counter()
            value = batch_rows_step(centers, u)
            elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            best = min(best, elapsed.item())
        if rank == 0:
            Path(out).write_text(json.dumps({"seconds": best, "loss": value}))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def sharded_seconds(m: int, u: int, ranks: int, repeats: int) -> tuple[float, float]:
    """(best time of the batch-rows step with `ranks` gloo processes on this CPU, one thread each; its loss)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        mp.spawn(_shard_worker, args=(ranks, str(Path(tmp) / "init"), m, u, repeats, str(out)), nprocs=ranks,
                 join=True)
        result = json.loads(out.read_text())
    return result["seconds"], result["loss"]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_child(rows: int, dim: int, device: str) -> None:
    """Runs in its own process. The peak is VmHWM (this process image's RSS high-water mark), reset
    after the centers exist; ru_maxrss would not do: after fork + exec it keeps the parent's RSS."""
    centers = unit_centers(rows, dim, torch.device(device))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset VmHWM to the current RSS
        base = _status_kib("VmRSS") * 1024
    start = time.perf_counter()
    loss = batch_rows_step(centers, batch_classes(rows))
    sync(centers.device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else _status_kib("VmHWM") * 1024
    print(json.dumps({"peak_extra_mb": (peak - base) / 2 ** 20, "seconds": seconds, "loss": loss}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="comma-separated M values")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many (one above 50,000 centers)")
    parser.add_argument("--shard-ranks", type=int, default=2, help="gloo ranks of the sharded run; 0 skips it")
    parser.add_argument("--memory-rows", type=int, default=100_000, help="0 skips the memory run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_rows, DIM, args.device)
        return

    device = torch.device(args.device)
    threads = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"uniform loss (Eq. 6, per-center reduction) forward+backward, d = {DIM}, unit float32 centers on {device} "
          f"({threads}; load average {os.getloadavg()[0]:.1f}); U = classes of a {BATCH_IMAGES}-image batch")
    shard = f"{args.shard_ranks} gloo ranks" if args.shard_ranks else "sharded"
    print(f"{'M':>8} {'U':>5} | {'GFLOP all rows':>14} {'batch':>7} | {'all rows s':>10} {'batch s':>7} "
          f"{'speed-up':>8} | {shard + ' s':>15} {'loss check':>10}")
    for m in (int(v) for v in args.sizes.split(",")):
        u = batch_classes(m)
        repeats = args.repeats if m <= 50_000 else 1
        centers = unit_centers(m, DIM, device)
        flops_all_rows, flops_batch_rows = step_flops(m, u)
        all_rows_s, all_rows_loss = best_seconds(lambda: all_rows_step(centers), repeats, device)
        batch_rows_s, batch_rows_loss = best_seconds(lambda: batch_rows_step(centers, u), repeats, device)
        check = f"{abs(batch_rows_loss - all_rows_loss) / all_rows_loss:.0e}"
        sharded = "-"
        if args.shard_ranks and device.type == "cpu":
            shard_s, shard_loss = sharded_seconds(m, u, args.shard_ranks, repeats)
            sharded = f"{shard_s:.2f}"
            check += f", {abs(shard_loss - all_rows_loss) / all_rows_loss:.0e}"
        print(f"{m:>8,} {u:>5} | {flops_all_rows / 1e9:>14.0f} {flops_batch_rows / 1e9:>7.0f} | {all_rows_s:>10.2f} "
              f"{batch_rows_s:>7.2f} {all_rows_s / batch_rows_s:>7.2f}x | {sharded:>15} {check:>10}", flush=True)
    print("(loss check: relative difference of the batch-rows loss, then of the sharded one, from all rows'; "
          f"load average now {os.getloadavg()[0]:.1f})")

    if args.memory_rows:
        print(f"peak extra memory, {args.memory_rows} x {DIM} batch-rows step in a subprocess ...", flush=True)
        command = [sys.executable, __file__, "--memory-child", "--memory-rows", str(args.memory_rows),
                   "--device", args.device]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        verdict = "within" if result["peak_extra_mb"] < 2048 else "OVER"
        finite = math.isfinite(result["loss"])
        print(f"  peak extra {result['peak_extra_mb']:.0f} MB ({verdict} the 2 GB budget), {result['seconds']:.0f} s, "
              f"loss {result['loss']:.8f} (finite: {finite})")


if __name__ == "__main__":
    main()
