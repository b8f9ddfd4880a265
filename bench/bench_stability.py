"""The earlier port went NaN at center update rates 0.01 and 0.1. Runs 200 toy iterations for each
beta in {0.001, 0.01, 0.1} in both center modes and prints the losses and center distances at the
end (all must be finite).

    PYTHONPATH=code python bench/bench_stability.py [--iterations 200]
"""
import argparse
import math
import sys
import tempfile
from pathlib import Path

from common import stability_run, write_aligned_tree


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()
    print("| mode | beta | final CE | final L_u | max L_u | mean min center distance | all finite |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        tree = write_aligned_tree(Path(tmp) / "train", n_classes=8, per_class=4)
        for mode in ("feature", "weight"):
            for beta in (0.001, 0.01, 0.1):
                lines = stability_run(tree, Path(tmp) / f"{mode}_{beta}", mode, beta, args.iterations)
                finite = all(math.isfinite(l[k]) for l in lines
                             for k in ("loss", "cross_entropy", "uniform_loss", "mean_min_center_distance"))
                ok &= finite
                last = lines[-1]
                print(f"| {mode} | {beta} | {last['cross_entropy']:.4f} | {last['uniform_loss']:.5f} | "
                      f"{max(l['uniform_loss'] for l in lines):.5f} | {last['mean_min_center_distance']:.3f} | {finite} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
