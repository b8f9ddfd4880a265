"""The trainer flushes denormal floats on a CPU (train/build.py, flush_denormals_on_cpu). The same short
stability run (SphereFace-4, head weights as centers, beta 0.1, lr 0.1) with denormals kept and flushed,
each in a fresh process of its own (the setting is per thread: a process's threads keep what they started
with), alternated `--repeats` times: the best wall time of each, their ratio, and the final losses.

    PYTHONPATH=code python bench/bench_denormals.py [--iterations 200] [--repeats 2]
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import stability_run, write_aligned_tree


def one_run(denormals: str, iterations: int) -> dict:
    """In this (fresh) process: the run's wall time (imports excluded) and its last metrics line."""
    import torch

    import uniformface.train.trainer as trainer

    if denormals == "kept":
        trainer.flush_denormals_on_cpu = lambda device: None
    with tempfile.TemporaryDirectory() as tmp:
        tree = write_aligned_tree(Path(tmp) / "train", n_classes=8, per_class=4)
        start = time.perf_counter()
        last = stability_run(tree, Path(tmp) / "run", "weight", beta=0.1, iterations=iterations)[-1]
        seconds = time.perf_counter() - start
    flushed = torch.tensor([1e-40]).mul(1.0).item() == 0.0
    return {"seconds": seconds, "last": last, "flushed": flushed, "threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", choices=["kept", "flushed"], help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one, args.iterations)))
        return 0
    runs = {"kept": [], "flushed": []}
    for _ in range(args.repeats):
        for denormals in runs:
            child = subprocess.run([sys.executable, __file__, "--one", denormals, "--iterations", str(args.iterations)],
                                   capture_output=True, text=True, check=True)
            runs[denormals].append(json.loads(child.stdout.strip().splitlines()[-1]))
    assert not any(r["flushed"] for r in runs["kept"]) and all(r["flushed"] for r in runs["flushed"])
    print(f"{args.iterations} iterations, {runs['kept'][0]['threads']} threads, best of {args.repeats}")
    print("| denormals | wall s | final CE | final L_u |\n| --- | --- | --- | --- |")
    best = {}
    for denormals, results in runs.items():
        best[denormals] = min(r["seconds"] for r in results)
        last = results[0]["last"]
        print(f"| {denormals} | {best[denormals]:.1f} | {last['cross_entropy']:.5f} | {last['uniform_loss']:.5f} |")
    print(f"flushed is {best['kept'] / best['flushed']:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
