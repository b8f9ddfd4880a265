"""Fixtures and test data shared by the test files.

Where a test goes (tests mirror the code):
- a library module code/uniformface/<layer>/<module>.py: tests/test_<module>.py (the package's own
  __init__.py, its public names, its layers and its installation: tests/test_package.py);
- the training sets of data/: tests/test_datasets.py for their shared part (__init__.py: open_train_set and
  the training loader; trainset.py; folder.py: the image-folder set), tests/test_recordio.py for
  data/recordio.py and tests/test_packed.py for data/packed.py;
- a script, code/<script>.py and uniformface/commands/<script>.py (its argument parsing and what it prints
  and writes, run end to end through its main or as a process): tests/test_<script>.py, named after the
  script (train.py: test_train.py, test.py: test_test.py, pack_dataset.py: test_pack_dataset.py); export.py
  is both a module and a script, and test_export.py holds both. What every script shares (uniformface/base/cli.py
  and the list of scripts in commands/__init__.py) is tested in tests/test_cli.py;
- tests/test_repository.py, test_docker.py and test_gpu_check.py check files outside code/ (comments and
  docs, the container files, bench/gpu_check.py).
A test file may import helpers from the test file of a module below it (test_test.py from test_evaluate.py)
and from bench/ (bench/common.py), never the reverse; benchmarks import nothing from tests/. Data makers
that several test files use live here.
"""
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from common import write_aligned_tree  # bench/common.py: the benchmarks make the same trees

ROOT = Path(__file__).resolve().parents[1]


def share_the_cores() -> None:
    """Under pytest-xdist (`make test`) each worker gets its share of the cores for PyTorch's threads, and so
    do the processes its tests start: OpenMP threads that outnumber the cores spin waiting on each other
    (two 2-thread runs side by side on 2 cores took twice as long as two 1-thread runs)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS
        threads = max(1, cores // workers)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


share_the_cores()


def denormals_flushed() -> bool:
    """Whether this thread flushes denormal floats: 1e-40 lies below float32's smallest normal number
    (1.18e-38), and a product that gives it reads 0 when they are flushed."""
    return torch.tensor([1e-40]).mul(1.0).item() == 0.0


def load_script(name):
    """code/<name>.py as a module (loaded from its path: `import test` would find Python's own test package)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "code" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    from uniformface.align.face import FaceDetector

    return FaceDetector()


@pytest.fixture
def aligned_tree(tmp_path):
    return write_aligned_tree(tmp_path / "train")


@pytest.fixture
def tree_factory():
    return write_aligned_tree


@pytest.fixture
def small_tree(tmp_path):
    return write_aligned_tree(tmp_path / "train", n_classes=2, per_class=4)


def write_lfw_tree(root, n_names=6, per_name=3, n_folds=2, n_per_side=3, seed=1):
    """An LFW-style aligned tree (`name/name_%04d.jpg`) and a `pairs.txt` in LFW's format beside it."""
    from uniformface.eval.pairs import write_pairs

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


def bomb_png(width=20000, height=20000):
    """A PNG header announcing 400 megapixels (above Pillow's 178,956,970): no pixel data needed to open it."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def write_bin(path, images, issame, quality=95):
    """Write an insightface `.bin`: uint8 (H, W, 3) arrays are JPEG-encoded, bytes are stored as they are.
    issame is stored as a numpy bool array; the write is atomic."""
    import pickle

    from uniformface.base.atomic import atomic_write_bytes
    from uniformface.base.images import encode_image

    issame = np.asarray(issame, dtype=bool)
    if len(images) != 2 * len(issame):
        raise ValueError(f"{path}: {len(images)} images for {len(issame)} pairs; need exactly two per pair")
    bins = [bytes(image) if isinstance(image, (bytes, bytearray)) else encode_image(image, "JPEG", quality)
            for image in images]
    atomic_write_bytes(path, pickle.dumps((bins, issame), protocol=4))


def write_bin_set(path, n_pairs=40, size=(112, 112), seed=0):
    """A `.bin` of `n_pairs` pairs of real JPEGs, same and different alternating: each identity a smooth
    pattern of its own, each image of it with its own noise, so that a network can tell some apart."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[0], 0:size[1]] / max(size)

    def identity():
        freq = rng.uniform(2, 9, size=(3, 2))
        return np.stack([np.sin(2 * np.pi * (f[0] * yy + f[1] * xx)) for f in freq], -1)

    def photo(base):
        return np.clip(127.5 + 90 * base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)

    images, issame = [], []
    for k in range(n_pairs):
        same = k % 2 == 0
        a = identity()
        images += [photo(a), photo(a if same else identity())]
        issame.append(same)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bin(path, images, issame)
    return path


class TinyEmbedder:
    """A deterministic linear 'network' per input size: f = normalised pixels (C, H, W order) @ w64[size]
    (float64 copies kept for the tests' independent references: `tiny_feature64`); counts the images it sees,
    and stops like a killed process once it has seen `fail_after`."""

    def __init__(self, dim=5, seed=0, fail_after=None):
        rng = np.random.default_rng(seed)
        self.w64 = {size: rng.normal(size=(3 * size[0] * size[1], dim)) / 100 for size in ((112, 96), (112, 112))}
        self.w = {size: torch.from_numpy(w.astype(np.float32)) for size, w in self.w64.items()}
        self.images = 0
        self.fail_after = fail_after

    def __call__(self, x):
        if self.fail_after is not None and self.images >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.images += len(x)
        return x.flatten(1) @ self.w[tuple(x.shape[2:])]


def tiny_feature64(pixels, w64):
    """TinyEmbedder's f in float64 straight from a uint8 (H, W, 3) crop: (p - 127.5) / 128, channels
    first, @ w64 (its float64 weights for that crop size)."""
    return ((pixels.astype(np.float64) - 127.5) / 128).transpose(2, 0, 1).ravel() @ w64
