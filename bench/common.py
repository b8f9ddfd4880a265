"""Data and runs that both the benchmarks and the tests use: a small training tree of real JPEG files and a
short training run that logs every 10 iterations. The benchmarks import it from their own folder; the
tests (which may import from bench/, never the reverse) find it through pytest.ini's `pythonpath`."""
import json
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def write_aligned_tree(root, n_classes=4, per_class=6, size=(112, 96), seed=0):
    """A small aligned-face-like training tree of real JPEG files: each class a smooth pattern of its own
    plus per-image noise, so that a few iterations can reduce the loss."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[0], 0:size[1]] / max(size)
    for c in range(n_classes):
        freq = rng.uniform(2, 9, size=(3, 2))
        base = np.stack([np.sin(2 * np.pi * (f[0] * yy + f[1] * xx)) for f in freq], -1)
        (root / f"{c:07d}").mkdir(parents=True)
        for i in range(per_class):
            pixels = 127.5 + 90 * base + rng.normal(0, 20, base.shape)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / f"{c:07d}" / f"{i:03d}.jpg", quality=90)
    return root


def stability_run(tree, run_dir, center_mode: str, beta: float, iterations: int = 200) -> list[dict]:
    """A short training run shared by the stability test and its benchmark: lr 0.1 (the paper's), short
    warm-up, a log line every 10 iterations; returns the metrics.jsonl records."""
    # Imported here: every test session imports this file for write_aligned_tree (tests/conftest.py), and
    # the trainer (with TensorBoard) takes seconds to import.
    from uniformface.base.config import load_config
    from uniformface.train.trainer import train

    cfg = load_config(ROOT / "code" / "configs" / "toy.yaml", [
        f"dataset.train={tree}", "dataset.exclude_identities=[]", "model_name=sphereface4", "emb_dim=32",
        "batch_size=4", "num_workers=0", f"max_iters={iterations}", f"checkpoint_every={iterations}",
        "log_every=10", f"milestones=[{int(iterations * 0.75)}]", "warmup_iters=20", "lr=0.1", "device=cpu",
        f"center_mode={center_mode}", f"beta={beta}"])
    train(cfg, run_dir, progress=False)
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def sync(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that a timer reads what ran."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
