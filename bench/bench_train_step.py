"""Training-step speed: the project's Trainer.step (backbone + A-Softmax + uniform loss on all class
centers + center update) against a plain, straightforward PyTorch loop doing the same work, timed
alternately in the same process. Prints images/s of both and the ratio (ours / plain; >= 1 is no slower).

    PYTHONPATH=code python bench/bench_train_step.py [--model sphereface4] [--batch 32] [--steps 10]
"""
import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import write_aligned_tree
from uniformface.base.config import load_config
from uniformface.nn.heads import ASoftmax
from uniformface.nn.models import build_model, normalize_pixels
from uniformface.train.trainer import Trainer


def plain_step(model, head, optimizer, centers, images, labels, beta):
    """What a straightforward port writes: full-matrix uniform loss over all centers, Python-loop update."""
    feats = model(normalize_pixels(images))
    ce = F.cross_entropy(head(feats, labels), labels)
    c = centers.clone()
    for j in labels.unique():
        mask = labels == j
        c[j] = (centers[j] + feats[mask].sum(0)) / (1 + mask.sum())
    dist = torch.cdist(c, c) + 1
    m = len(c)
    uniform = ((1 / dist).sum() - m) / (m * (m - 1))
    loss = ce + uniform
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        for j in labels.unique():
            mask = labels == j
            delta = (centers[j] - feats[mask]).sum(0) / (1 + mask.sum())
            centers[j] -= beta * delta


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="sphereface4")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--classes", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = write_aligned_tree(Path(tmp) / "train", n_classes=args.classes, per_class=4)
        cfg = load_config(None, [f"dataset.train={tree}", "dataset.exclude_identities=[]", f"model_name={args.model}",
                                 f"batch_size={args.batch}", "num_workers=0", "device=cpu", "warmup_iters=0"])
        ours = Trainer(cfg, Path(tmp) / "run", progress=False)
        images = torch.randint(0, 256, (args.batch, 3, 112, 96), dtype=torch.uint8)
        labels = torch.randint(0, args.classes, (args.batch,))
        model = build_model(args.model)
        head = ASoftmax(512, args.classes)
        optimizer = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9,
                                    weight_decay=5e-4)
        centers = torch.randn(args.classes, 512)
        ours.step(images, labels)  # warm-up both (first-touch allocations)
        plain_step(model, head, optimizer, centers, images, labels, 0.5)
        t_ours = t_plain = 0.0
        def timed(fn) -> float:
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

        run_ours = lambda: ours.step(images, labels)  # noqa: E731
        run_plain = lambda: plain_step(model, head, optimizer, centers, images, labels, 0.5)  # noqa: E731
        for step in range(args.steps):  # interleaved, the order swapped each step, so noise hits both alike
            if step % 2:
                t_plain += timed(run_plain)
                t_ours += timed(run_ours)
            else:
                t_ours += timed(run_ours)
                t_plain += timed(run_plain)
    n = args.steps * args.batch
    print(f"{args.model}, batch {args.batch}, {args.classes} classes, {torch.get_num_threads()} threads")
    print(f"ours : {n / t_ours:8.1f} images/s")
    print(f"plain: {n / t_plain:8.1f} images/s")
    print(f"ratio ours/plain: {t_plain / t_ours:.2f}x")


if __name__ == "__main__":
    main()
