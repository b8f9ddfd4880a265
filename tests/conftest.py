import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def one_torch_thread():
    """MTCNN is many small operations: one thread is nearly as fast as two, and on a busy machine far
    faster (OpenMP threads spin while they wait for a core). Modules opt in with `usefixtures`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Each device this machine has: the CPU always, CUDA too where there is one (bench/gpu_check.sh runs
    the suite on a GPU machine), so the float64 references also pin the CUDA kernels."""
    return torch.device(request.param)


@pytest.fixture
def cuda():
    """For comparisons of the GPU with the CPU, which only a CUDA machine can make."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here: GPU-against-CPU comparison (run by bench/gpu_check.sh)")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def detector():
    from uniformface.align import FaceDetector

    return FaceDetector()


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


def write_lfw_tree(root, n_names=6, per_name=3, n_folds=2, n_per_side=3, seed=1):
    """An LFW-style aligned tree (`name/name_%04d.jpg`) and a `pairs.txt` in LFW's format beside it."""
    from uniformface.pairs import write_pairs

    rng = np.random.default_rng(seed)
    tree = write_aligned_tree(root / "raw", n_classes=n_names, per_class=per_name, seed=seed)
    names = [f"Person_{k:02d}" for k in range(n_names)]
    for k, name in enumerate(names):
        (root / "lfw" / name).mkdir(parents=True)
        for i in range(per_name):
            (tree / f"{k:07d}" / f"{i:03d}.jpg").rename(root / "lfw" / name / f"{name}_{i + 1:04d}.jpg")
    folds = []
    for _ in range(n_folds):
        same = [(names[a], 1 + b, 1 + (b + 1) % per_name) for a, b in
                zip(rng.integers(0, n_names, n_per_side), rng.integers(0, per_name, n_per_side))]
        different = []
        for _ in range(n_per_side):
            a, b = rng.choice(n_names, 2, replace=False)
            different.append((names[a], int(rng.integers(1, per_name + 1)), names[b], int(rng.integers(1, per_name + 1))))
        folds.append((same, different))
    write_pairs(root / "pairs.txt", folds)
    return root / "lfw", root / "pairs.txt"


@pytest.fixture
def lfw_tree(tmp_path):
    return write_lfw_tree(tmp_path)
