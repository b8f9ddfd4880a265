import numpy as np
import pytest
from PIL import Image


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


@pytest.fixture
def aligned_tree(tmp_path):
    return write_aligned_tree(tmp_path / "train")


@pytest.fixture
def tree_factory():
    return write_aligned_tree
