"""The trainer flushes denormal floats on a CPU (train/build.py, flush_denormals_on_cpu). The same short
stability run (SphereFace-4, head weights as centers, beta 0.1, lr 0.1) with denormals kept, then flushed,
in this one process: wall time of each, their ratio, and the final losses side by side.

    PYTHONPATH=code python bench/bench_denormals.py [--iterations 100]
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import uniformface.train.trainer as trainer
from common import stability_run, write_aligned_tree


def timed_run(tree, run_dir, iterations: int) -> tuple[float, dict]:
    start = time.perf_counter()
    lines = stability_run(tree, run_dir, "weight", beta=0.1, iterations=iterations)
    return time.perf_counter() - start, lines[-1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args()
    flush = trainer.flush_denormals_on_cpu
    with tempfile.TemporaryDirectory() as tmp:
        tree = write_aligned_tree(Path(tmp) / "train", n_classes=8, per_class=4)
        trainer.flush_denormals_on_cpu = lambda device: torch.set_flush_denormal(False)
        kept, kept_last = timed_run(tree, Path(tmp) / "kept", args.iterations)
        trainer.flush_denormals_on_cpu = flush
        flushed, flushed_last = timed_run(tree, Path(tmp) / "flushed", args.iterations)
    print(f"{args.iterations} iterations, {torch.get_num_threads()} threads")
    print("| denormals | wall s | final CE | final L_u |\n| --- | --- | --- | --- |")
    for name, wall, last in (("kept", kept, kept_last), ("flushed", flushed, flushed_last)):
        print(f"| {name} | {wall:.1f} | {last['cross_entropy']:.5f} | {last['uniform_loss']:.5f} |")
    print(f"flushed is {kept / flushed:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
