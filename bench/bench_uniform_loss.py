"""Uniform loss (UniformFace Eq. 6), forward + backward:
1. time on 10,572 x 512 centers (CASIA-WebFace's classes) for `uniform_loss` (row blocks, loss and
   gradient in one sweep) against the naive version (one full torch.cdist matrix under autograd), same
   run, as a ratio;
2. peak extra host memory for 100,000 x 512 centers (195 MiB themselves), measured in a fresh
   subprocess from Linux's VmHWM; everything the call allocates counts, the centers' gradient included.
   The budget is 2 GB.

    PYTHONPATH=code python bench/bench_uniform_loss.py [--rows 10572] [--memory-rows 100000] [--device cpu]

The 100,000-row run does ~2e13 flops: 5-11 minutes on two (shared) CPU cores, about a second on a GPU.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from common import sync
from uniformface.nn.losses import uniform_loss


def naive_uniform_loss(centers: torch.Tensor) -> torch.Tensor:
    """Eq. 6 with the whole M x M distance matrix in the autograd graph."""
    m = len(centers)
    inverse = 1.0 / (torch.cdist(centers, centers) + 1.0)
    return (inverse.sum() - inverse.diagonal().sum()) / (m * (m - 1))


def time_forward_backward(fn, centers: torch.Tensor, repeats: int) -> tuple[float, float]:
    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        centers.grad = None
        sync(centers.device)
        start = time.perf_counter()
        loss = fn(centers)
        loss.backward()
        sync(centers.device)
        best = min(best, time.perf_counter() - start)
        value = loss.item()
    return best, value


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_child(rows: int, dim: int, device: str) -> None:
    """Runs in its own process. The peak is VmHWM (this process image's RSS high-water mark), reset
    after the centers exist; ru_maxrss would not do: after fork + exec it keeps the parent's RSS."""
    torch.manual_seed(0)
    centers = (torch.randn(rows, dim, device=device) * 5).requires_grad_()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset VmHWM to the current RSS
        base = _status_kib("VmRSS") * 1024
    start = time.perf_counter()
    loss = uniform_loss(centers)
    loss.backward()
    sync(centers.device)
    seconds = time.perf_counter() - start
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _status_kib("VmHWM") * 1024
    print(json.dumps({"peak_extra_mb": (peak - base) / 2 ** 20, "seconds": seconds, "loss": loss.item(),
                      "grad_finite": bool(torch.isfinite(centers.grad).all())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10572)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-rows", type=int, default=100_000, help="0 skips the memory run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_rows, args.dim, args.device)
        return

    device = torch.device(args.device)
    torch.manual_seed(0)
    centers = (torch.randn(args.rows, args.dim, device=device) * 5).requires_grad_()
    print(f"uniform_loss forward+backward, {args.rows} x {args.dim} float32 on {device} "
          f"({torch.get_num_threads()} CPU threads), best of {args.repeats}")
    chunked_s, chunked_value = time_forward_backward(uniform_loss, centers, args.repeats)
    chunked_grad = centers.grad.clone()
    naive_s, naive_value = time_forward_backward(naive_uniform_loss, centers, args.repeats)
    grad_error = ((chunked_grad - centers.grad).abs().max() / centers.grad.abs().max()).item()
    print(f"  chunked (ours)      {chunked_s:8.3f} s   loss {chunked_value:.8f}")
    print(f"  naive full cdist    {naive_s:8.3f} s   loss {naive_value:.8f}")
    print(f"  speed-up naive/ours {naive_s / chunked_s:8.2f} x   (max gradient difference {grad_error:.1e} relative)")

    if args.memory_rows:
        print(f"peak extra memory, {args.memory_rows} x {args.dim} forward+backward in a subprocess ...", flush=True)
        command = [sys.executable, __file__, "--memory-child", "--memory-rows", str(args.memory_rows),
                   "--dim", str(args.dim), "--device", args.device]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        verdict = "within" if result["peak_extra_mb"] < 2048 else "OVER"
        print(f"  peak extra {result['peak_extra_mb']:.0f} MB ({verdict} the 2 GB budget), "
              f"{result['seconds']:.0f} s, loss {result['loss']:.8f}, gradient finite: {result['grad_finite']}")


if __name__ == "__main__":
    main()
