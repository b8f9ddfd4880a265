"""Does the data loader keep the model fed? Times, in one process, the training loader alone (JPEG
decode + flip + collate, as Trainer builds it) and the training step of SphereFace-20 alone, and prints
the ratio of images/s (the loader must deliver >= 5x what the model consumes).

    PYTHONPATH=code python bench/bench_loader.py [--model sphereface20] [--batch 32] [--workers 2]
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import write_aligned_tree
from uniformface.base.config import load_config
from uniformface.train.trainer import Trainer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="sphereface20")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--loader_batches", type=int, default=40)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = write_aligned_tree(Path(tmp) / "train", n_classes=32, per_class=20)
        cfg = load_config(None, [f"dataset.train={tree}", "dataset.exclude_identities=[]", f"model_name={args.model}",
                                 f"batch_size={args.batch}", f"num_workers={args.workers}", "device=cpu"])
        trainer = Trainer(cfg, Path(tmp) / "run", progress=False)
        loader = iter(trainer._loader())
        next(loader)  # worker start-up is not throughput
        t = time.perf_counter()
        for _ in range(args.loader_batches):
            images, labels, _ = next(loader)
        loader_rate = args.loader_batches * args.batch / (time.perf_counter() - t)
        trainer.step(images, labels)
        t = time.perf_counter()
        for _ in range(args.steps):
            trainer.step(images, labels)
        model_rate = args.steps * args.batch / (time.perf_counter() - t)
    print(f"{args.model}, batch {args.batch}, {args.workers} loader workers, {torch.get_num_threads()} torch threads")
    print(f"loader   : {loader_rate:8.1f} images/s")
    print(f"training : {model_rate:8.1f} images/s")
    print(f"ratio loader/training: {loader_rate / model_rate:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
