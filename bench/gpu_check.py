"""One short check of the project on a GPU machine (H100/H200: well under 8 minutes), one summary table.

    PYTHONPATH=code python bench/gpu_check.py [--device cuda] [--json FILE] [--no_compile] [--tests]
    PYTHONPATH=code python bench/gpu_check.py --quick --device cpu     # tiny sizes: a CPU smoke run

Measures, in this order:
- training: Trainer.step of SphereFace-20 at 112x96, batch 256 (one official GPU's share of the global
  512), A-Softmax over 10,572 classes
  (CASIA-WebFace minus the 3 LFW identities) + the uniform loss over all of them (every center
  initialised: the steady state), on synthetic uint8 batches after warm-up; bf16 autocast + channels_last
  (the config's defaults), fp32, and bf16 under torch.compile (its compile time shown apart); and what
  28,000 iterations of 512 images (config.yaml) take at that rate;
- the training loader (JPEG decode + flip + collate, as Trainer builds it) in images/s, which must exceed
  the step's rate for that estimate to hold;
- MTCNN (align.FaceDetector.detect_batch) on 250x250 photos, against facenet-pytorch's own cascade on the
  same nets and batches, and on CUDA the agreement of its landmarks with the CPU detector's;
- LFW-size feature extraction: 13,233 images of 112x96 and their mirrors through SphereFace-20 (fp32, as
  test.py runs it), from JPEG files through the DataLoader and the network alone; on CUDA the agreement of the
  features with the CPU's;
- the uniform loss (Eq. 6) at the paper's 85,742 classes (MS1M-refined), forward + backward: the plain step
  (exact float32, every center's gradient) against `ClassCenters.uniform_loss_of`'s (split-bf16
  Gram products on CUDA, the batch's classes' gradient only), the split products' error against float64 on
  8,192 unit centers, and beside them the bf16 step (forward, backward, SGD) of the network alone for
  SphereFace-20 and IResNet-50 at batch 256; a loss that is not finite or an error above 1e-4 fails the check;
- with --tests, the test suite (pytest -q) in the time left of --budget seconds; on a CUDA machine the
  tests taking the `device` fixture run on the GPU as well, and those taking `cuda` compare it with the CPU.

Every stage runs under a deadline (SIGALRM): the measurements share --budget minus --test_reserve (the suite
gets at least that), each stage at most its own cap, and a stage that runs out of time gives a "stopped"
row instead of a number. The whole check therefore ends within --budget (default 450 s) plus the import
time, on any machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from common import sync
from uniformface.train import trainer as trainer_module
from uniformface.base.config import load_config
from uniformface.base.registry import BACKBONES
from uniformface.data import TrainSet
from uniformface.eval.embedding import ImageFiles, extract_features
from uniformface.nn.models import build_model, normalize_pixels

ROOT = Path(__file__).resolve().parents[1]

CASIA_CLASSES = 10_572  # CASIA-WebFace's 10,575 identities minus the 3 that are in LFW (SphereFace's release drops them)
LFW_IMAGES = 13_233
PAPER_ITERATIONS = 28_000  # code/config.yaml max_iters
PAPER_BATCH = 512  # code/config.yaml batch_size: the official 2 GPUs x 256
STEP_BATCH = 256  # the batch the throughput is measured at: one official GPU's share
MS1M_CLASSES = 85_742  # MS1M-refined's identities: the paper's own training data
ACCURACY_CENTERS = 8_192  # unit centers for the split-bf16 products' error against float64
ERROR_BOUND = 1e-4  # docs/DESIGN.md §4.6: the uniform loss and its gradient against float64, relative


class Row(dict):
    """One line of the summary: what, value, unit, note."""


class OutOfTime(Exception):
    """A stage's deadline has passed."""


@contextmanager
def deadline(seconds: float):
    """Raise OutOfTime in this (main) thread once `seconds` have passed. Python raises it between
    bytecodes, so a single long kernel finishes first; DataLoader workers do not inherit the timer."""
    def ring(signum, frame):
        raise OutOfTime(f"{seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _ClassesOnly(TrainSet):
    """Stands in for the training set where only its class count matters (synthetic batches): one blank
    image per class; the rest of what Trainer asks of a set comes from TrainSet."""

    def __init__(self, num_classes: int):
        self.classes = [f"{i:07d}" for i in range(num_classes)]

    def __len__(self) -> int:
        return self.num_classes

    def label(self, index: int) -> int:
        return index

    def load(self, index: int) -> torch.Tensor:
        return torch.zeros(3, 112, 96, dtype=torch.uint8)

    def describe(self, index: int) -> str:
        return f"synthetic class {index}"

    def header_sizes(self):
        """What Trainer's image check reads: every image 112x96, none unreadable."""
        return np.tile(np.array([[112, 96]]), (self.num_classes, 1)), {}


def train_rate(device: torch.device, model: str, batch: int, classes: int, warmup: int, steps: int,
               amp: bool, compile_: bool, scratch: Path) -> dict:
    """images/s of Trainer.step on one fixed synthetic batch (pinned uint8 on the host, as the loader
    hands them over), plus the compile/warm-up time and the last loss."""
    overrides = [f"model_name={model}", f"batch_size={batch}", "num_workers=0", f"device={device.type}",
                 f"amp={str(amp).lower()}", "channels_last=true", f"compile={str(compile_).lower()}",
                 "warmup_iters=0", "dataset.exclude_identities=[]"]
    cfg = load_config(ROOT / "code" / "config.yaml", overrides)
    original = trainer_module.open_train_set
    trainer_module.open_train_set = lambda *a, **k: _ClassesOnly(classes)
    try:
        trainer = trainer_module.Trainer(cfg, scratch / f"run_{amp}_{compile_}", progress=False)
    finally:
        trainer_module.open_train_set = original
    centers = getattr(trainer.centers, "centers", None)
    if centers is not None:  # every class seen once already: the uniform loss runs over all of them
        with torch.no_grad():
            centers.normal_()
            trainer.centers.initialized.fill_(True)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 112, 96), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    if device.type == "cuda":
        images = images.pin_memory()
    start = time.perf_counter()
    for _ in range(warmup):
        trainer.step(images, labels)
    sync(device)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        metrics = trainer.step(images, labels)
    sync(device)
    elapsed = time.perf_counter() - start
    return {"images_per_s": steps * batch / elapsed, "warmup_s": warm, "loss": float(metrics.loss)}


def loader_rate(workers: int, batch: int, batches: int, scratch: Path) -> float:
    """images/s of the training DataLoader (Trainer._loader) over real JPEG files."""
    from common import write_aligned_tree

    tree = write_aligned_tree(scratch / "loader_tree", n_classes=16, per_class=max(4, batch // 8))
    cfg = load_config(None, [f"dataset.train={tree}", "dataset.exclude_identities=[]", "model_name=sphereface4",
                             f"batch_size={batch}", f"num_workers={workers}", "device=cpu"])
    loader = iter(trainer_module.Trainer(cfg, scratch / "loader_run", progress=False)._loader())
    next(loader)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * batch / (time.perf_counter() - start)


def mtcnn_rate(device: torch.device, count: int, scratch: Path) -> dict:
    from bench_align import make_photos
    from uniformface.align.face import FaceDetector
    from uniformface.base.images import decode_rgb

    names = make_photos(scratch / "photos", count)
    photos = [decode_rgb(scratch / "photos" / n) for n in names]
    detector = FaceDetector(device=str(device))
    detector.detect_batch(photos[: detector.batch_size])  # CUDA context, cuDNN autotuning
    sync(device)
    start = time.perf_counter()
    found = detector.detect_batch(photos)
    sync(device)
    result = {"images_per_s": count / (time.perf_counter() - start), "found": sum(p is not None for p in found),
              "batch_size": detector.batch_size}
    # facenet-pytorch's own cascade on the same nets and batches: its per-box resize loop is what ours removes
    from facenet_pytorch.models.utils.detect_face import detect_face

    nets = detector.mtcnn
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, count, detector.batch_size):
            batch = torch.from_numpy(np.stack(photos[first:first + detector.batch_size])).to(device).float()
            detect_face(batch, detector.min_face_size, nets.pnet, nets.rnet, nets.onet, list(detector.thresholds),
                        detector.factor, device)
    sync(device)
    result["facenet_images_per_s"] = count / (time.perf_counter() - start)
    if device.type == "cuda":  # the GPU must find the same landmarks as the CPU
        reference = FaceDetector(device="cpu").detect_batch(photos[:8])
        both = [(a, b) for a, b in zip(found[:8], reference) if a is not None and b is not None]
        result["max_landmark_diff_px"] = max((float(np.abs(a - b).max()) for a, b in both), default=float("nan"))
        result["same_faces_found"] = [a is None for a in found[:8]] == [b is None for b in reference]
    return result


class _InMemory(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, count: int):
        self.images, self.count = images, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        return self.images[index % len(self.images)], index


def extraction_time(device: torch.device, model: str, count: int, workers: int, batch: int, scratch: Path) -> dict:
    """Seconds for `count` images (+ mirrors) through `model`, from JPEG files, and for the network alone."""
    from PIL import Image

    torch.manual_seed(0)
    net = build_model(model).to(device).eval()
    generator = torch.Generator().manual_seed(1)
    unique = min(count, 1000)  # distinct files; the list repeats them up to `count` (decode cost is the same)
    images = torch.randint(0, 256, (unique, 3, 112, 96), dtype=torch.uint8, generator=generator)
    folder = scratch / "lfw_like"
    folder.mkdir()
    for i in range(unique):
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.jpg", quality=90)
    paths = [f"{i % unique:05d}.jpg" for i in range(count)]
    extract_features(net, _InMemory(images, min(count, 2 * batch)), "plain", batch, 0, str(device), False)  # warm-up
    sync(device)
    start = time.perf_counter()
    f = extract_features(net, ImageFiles(folder, paths), "plain", batch, workers, str(device), False)
    sync(device)
    files_s = time.perf_counter() - start
    resident = images.to(device)
    start = time.perf_counter()
    with torch.no_grad():  # the network alone: batches already on the device, no loader, no copy back
        for first in range(0, count, batch):
            index = torch.arange(first, min(first + batch, count), device=device) % unique
            x = normalize_pixels(resident[index])
            net(torch.cat([x, x.flip(-1)]))
    sync(device)
    memory_s = time.perf_counter() - start
    result = {"files_s": files_s, "memory_s": memory_s, "count": int(len(f))}
    if device.type == "cuda":  # cuDNN (TF32 convolutions by default) against the CPU's float32
        cpu_net = build_model(model).eval()
        cpu_net.load_state_dict({k: v.cpu() for k, v in net.state_dict().items()})
        cpu_f = extract_features(cpu_net, _InMemory(images, 16), "plain", 16, 0, "cpu", False)
        a, b = f[:16].astype(np.float64), cpu_f.astype(np.float64)
        cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        result["min_cosine_vs_cpu"] = float(cosine.min())
    return result


def network_step_seconds(device: torch.device, name: str, batch: int, warmup: int, steps: int) -> float:
    """Seconds of one bf16-autocast (CUDA) training step of the network alone: forward, a stand-in loss on
    its features, backward, SGD."""
    size = (112, 112) if BACKBONES[name].family == "iresnet" else (112, 96)  # insightface's only crop
    net = build_model(name, input_size=size).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0)).to(device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            features = net(x)
        loss = features.float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def split_gram_errors(device: torch.device, rows: int) -> dict:
    """Relative errors against float64, on `rows` unit centers, of Eq. 6 and of its gradient through the
    projection onto the sphere (what reaches the features), for exact float32 and for split-bf16 Gram
    products (docs/DESIGN.md §4.6: both must stay within 1e-4)."""
    from bench_uniform_loss import precision_errors, unit_centers

    return {name: {"loss": loss, "gradient": gradient}
            for name, (loss, gradient) in precision_errors(unit_centers(rows, 512, device)).items()}


def uniform_loss_rates(device: torch.device, classes: int, accuracy_rows: int, networks: list[str], batch: int,
                       warmup: int, steps: int) -> dict:
    """The uniform loss's plain step and `uniform_loss_of`'s at `classes` unit centers, the split products'
    errors, and the networks' bf16 steps to compare them with."""
    from bench_uniform_loss import batch_classes, best_seconds, all_rows_step, batch_rows_step, step_flops, unit_centers
    from uniformface.nn.losses import split_products_run

    centers = unit_centers(classes, 512, device)
    u = batch_classes(classes)
    all_rows_step(centers)  # warm-up: cuBLAS handles, the split products' probe
    batch_rows_step(centers, u)
    repeats = 3 if device.type == "cuda" else 1
    all_rows_s, all_rows_loss = best_seconds(lambda: all_rows_step(centers), repeats, device)
    batch_rows_s, batch_rows_loss = best_seconds(lambda: batch_rows_step(centers, u), repeats, device)
    flops_all_rows, flops_batch_rows = step_flops(classes, u)
    native = device.type == "cuda" and split_products_run(device)
    return {"classes": classes, "batch_classes": u, "all_rows_s": all_rows_s, "batch_rows_s": batch_rows_s,
            "all_rows_loss": all_rows_loss, "batch_rows_loss": batch_rows_loss, "flops_all_rows": flops_all_rows,
            "flops_batch_rows": flops_batch_rows, "split_on_tensor_cores": native,
            "errors": split_gram_errors(device, accuracy_rows),
            "networks": {name: network_step_seconds(device, name, batch, warmup, steps) for name in networks}}


def uniform_loss_rows(u: dict, batch: int, amp_label: str) -> list[Row]:
    """The summary's rows for `uniform_loss_rates`' result."""
    m = f"{u['classes']} x 512"
    products = "split-bf16 Gram" if u["split_on_tensor_cores"] else "exact Gram"
    rows = [Row(what=f"uniform loss fwd+bwd {m}, every center's gradient (exact)", value=u["all_rows_s"],
                unit="s", note=f"{u['flops_all_rows'] / 1e12:.3g} TFLOP"),
            Row(what=f"uniform loss fwd+bwd {m}, uniform_loss_of ({products})", value=u["batch_rows_s"], unit="s",
                note=f"speed-up {u['all_rows_s'] / u['batch_rows_s']:.2f}x; {u['flops_batch_rows'] / 1e12:.3g} TFLOP "
                     f"(gradient for {u['batch_classes']} batch classes); loss differs by "
                     f"{abs(u['batch_rows_loss'] - u['all_rows_loss']) / u['all_rows_loss']:.1e}")]
    errors = u["errors"]
    rows.append(Row(what="uniform loss split-bf16 gradient vs float64", value=errors["split"]["gradient"],
                    unit="relative", note=f"loss {errors['split']['loss']:.1e}; exact float32: gradient "
                                          f"{errors['float32']['gradient']:.1e}, loss {errors['float32']['loss']:.1e} "
                                          f"(must stay below {ERROR_BOUND:g})"))
    for name, seconds in u["networks"].items():
        rows.append(Row(what=f"network step {name}, batch {batch}, {amp_label}", value=seconds, unit="s",
                        note=f"uniform_loss_of's step is {u['batch_rows_s'] / seconds:.2f}x this"))
    return rows


def uniform_loss_failures(u: dict | None) -> list[str]:
    """What fails the uniform-loss stage: a loss that is not finite, or a relative error against float64
    above ERROR_BOUND (exact float32 or split-bf16 products, loss or gradient)."""
    if not u:
        return []
    failures = [f"uniform loss {name} {u[name]}" for name in ("all_rows_loss", "batch_rows_loss")
                if not math.isfinite(u[name])]
    failures += [f"uniform loss {products} {what} error {error:.1e} > {ERROR_BOUND:g}"
                 for products, errors in u["errors"].items() for what, error in errors.items()
                 if not error <= ERROR_BOUND]  # NaN fails too
    return failures


def run_tests(seconds: float) -> dict:
    """pytest -q over the suite, stopped after `seconds`; its closing counts."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "code"))
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=max(seconds, 1))
        tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
        counts = dict((k, int(v)) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail))
        return {"returncode": done.returncode, "summary": tail, "seconds": time.perf_counter() - start, **counts}
    except subprocess.TimeoutExpired:
        return {"returncode": None, "summary": f"stopped after {seconds:.0f} s (budget)", "seconds": seconds}


def summary_table(rows: list[dict]) -> str:
    width = max(len(r["what"]) for r in rows)
    lines = [f"| {'measure':<{width}} | {'value':>12} | unit       | note", f"| {'-' * width} | {'-' * 12} | ---------- | ----"]
    for r in rows:
        value = r["value"]
        text = f"{value:12.1f}" if isinstance(value, float) and abs(value) >= 10 else (
            f"{value:12.4g}" if isinstance(value, float) else f"{value!s:>12}")
        lines.append(f"| {r['what']:<{width}} | {text} | {r['unit']:<10} | {r.get('note', '')}")
    return "\n".join(lines)


def hours_for(images_per_s: float, iterations: int = PAPER_ITERATIONS, batch: int = PAPER_BATCH) -> float:
    return iterations * batch / images_per_s / 3600.0


# seconds; compiling is last and longest: the other rows do not wait on it
STAGE_CAPS = {"train": 90.0, "train_fp32": 60.0, "loader": 45.0, "mtcnn": 60.0, "extraction": 90.0,
              "uniform": 90.0, "compile": 150.0}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke run)")
    parser.add_argument("--model", default="sphereface20", choices=list(BACKBONES))
    parser.add_argument("--no_compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--tests", action="store_true", help="run the test suite in the time left")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for everything, tests included")
    parser.add_argument("--test_reserve", type=float, default=150.0,
                        help="seconds of --budget kept for the test suite when --tests is given")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--json", help="write the rows here as well")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    measure_until = began + args.budget - (args.test_reserve if args.tests else 0.0)
    device = torch.device(args.device)
    q = args.quick
    batch, classes = (8, 100) if q else (STEP_BATCH, CASIA_CLASSES)
    warmup, steps = (1, 2) if q else (5, 30)
    photos, lfw, loader_batches = (2, 32, 3) if q else (512, LFW_IMAGES, 30)
    uniform_classes, accuracy_rows, network_batch = ((600, 300, 2) if q else
                                                     (MS1M_CLASSES, ACCURACY_CENTERS, STEP_BATCH))
    compile_ = not args.no_compile and not q
    amp_label = "bf16 autocast" if device.type == "cuda" else "fp32 (autocast is CUDA-only)"
    rows: list[dict] = []
    name = f"{args.model} 112x96"
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), torch "
          f"{torch.__version__}, {os.cpu_count()} CPUs{', quick sizes' if q else ''}", flush=True)

    def stage(key: str, what: str, measure):
        """measure() under its deadline; None and a "stopped" row when time runs out."""
        seconds = min(STAGE_CAPS[key], measure_until - time.perf_counter())
        try:
            if seconds > 0:  # else not started at all: an alarm in the middle of set-up leaves half-built objects
                with deadline(seconds):
                    return measure()
        except OutOfTime:
            pass
        finally:
            print(f"{key} done ({time.perf_counter() - began:.0f} s)", flush=True)
        rows.append(Row(what=what, value="stopped", unit="", note=f"out of time after {max(seconds, 0):.0f} s"))
        return None

    def versus_bf16(rate: float, text: str) -> str:
        return f"{rate / bf16['images_per_s']:.2f}x {text}" if bf16 else f"(no {amp_label} row to compare)"

    train_what = f"train {name}, batch {batch}, {classes} classes, {amp_label}"
    fp32 = compiled = rate = m = e = u = None
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        bf16 = stage("train", train_what, lambda: train_rate(device, args.model, batch, classes, warmup, steps, True,
                                                             False, scratch))
        if bf16:
            rows.append(Row(what=train_what, value=bf16["images_per_s"], unit="images/s",
                            note=f"loss {bf16['loss']:.3f}; 28k iterations x {PAPER_BATCH}: {hours_for(bf16['images_per_s']):.2f} h"))
        if device.type == "cuda":  # on a CPU both rows would be fp32
            what = f"train {name}, batch {batch}, fp32"
            fp32 = stage("train_fp32", what, lambda: train_rate(device, args.model, batch, classes, warmup, steps,
                                                                False, False, scratch))
            if fp32:
                rows.append(Row(what=what, value=fp32["images_per_s"], unit="images/s",
                                note=f"bf16 autocast speed-up {bf16['images_per_s'] / fp32['images_per_s']:.2f}x"
                                if bf16 else ""))

        what = f"training loader, JPEG 112x96, {args.workers} workers"
        rate = stage("loader", what, lambda: loader_rate(args.workers, batch, loader_batches, scratch))
        if rate:
            rows.append(Row(what=what, value=rate, unit="images/s",
                            note=versus_bf16(rate, "the first row's step (> 1: the GPU stays fed)")))

        what = "MTCNN detect_batch, 250x250 photos"
        m = stage("mtcnn", what, lambda: mtcnn_rate(device, photos, scratch))
        if m:
            note = (f"faces found {m['found']}/{photos}, batch {m['batch_size']}; "
                    f"{m['images_per_s'] / m['facenet_images_per_s']:.2f}x facenet's detect_face")
            if "max_landmark_diff_px" in m:
                note += (f"; vs CPU: max landmark diff {m['max_landmark_diff_px']:.3f} px, "
                         f"same faces found {m['same_faces_found']}")
            rows.append(Row(what=what, value=m["images_per_s"], unit="images/s", note=note))

        what = f"LFW-size features ({lfw} images)"
        e = stage("extraction", what, lambda: extraction_time(device, args.model, lfw, args.workers, 128, scratch))
        if e:
            note = f"{e['count']} images + mirrors, fp32, batch 128, {args.workers} workers"
            if "min_cosine_vs_cpu" in e:
                note += f"; min cosine vs CPU {e['min_cosine_vs_cpu']:.6f}"
            rows.append(Row(what=f"{what}, from JPEG files", value=e["files_s"], unit="s", note=note))
            rows.append(Row(what=f"{what}, network alone", value=e["memory_s"], unit="s",
                            note=f"{2 * lfw / e['memory_s']:.0f} images/s (mirrors included), batches already on the device"))

        what = f"uniform loss fwd+bwd {uniform_classes} x 512"
        u = stage("uniform", what, lambda: uniform_loss_rates(device, uniform_classes, accuracy_rows,
                                                              [args.model, "iresnet50"], network_batch, warmup, steps))
        if u:
            rows.extend(uniform_loss_rows(u, network_batch, amp_label))

        if compile_:
            what = f"train {name}, batch {batch}, {amp_label} + torch.compile"

            def measure_compiled():
                try:
                    return train_rate(device, args.model, batch, classes, warmup, steps, True, True, scratch)
                except OutOfTime:
                    raise
                except Exception as exc:  # a compiler failure is a finding, not a reason to lose the other rows
                    return exc

            compiled = stage("compile", what, measure_compiled)
            if isinstance(compiled, Exception):
                first = str(compiled).splitlines()[0][:100] if str(compiled) else ""
                rows.append(Row(what=what, value="failed", unit="", note=f"{type(compiled).__name__}: {first}"))
            elif compiled:
                rows.append(Row(what=what, value=compiled["images_per_s"], unit="images/s",
                                note=f"compile + warm-up {compiled['warmup_s']:.0f} s; "
                                     + versus_bf16(compiled["images_per_s"], "eager")))

    if args.tests:
        t = run_tests(args.budget - (time.perf_counter() - began))
        rows.append(Row(what="test suite (pytest -q)", value="stopped" if t["returncode"] is None else t.get("passed", 0),
                        unit="passed",
                        note=f"{t['summary']} ({t['seconds']:.0f} s)"))
    rows.append(Row(what="gpu_check total", value=time.perf_counter() - began, unit="s", note=f"budget {args.budget:.0f} s"))
    print(summary_table(rows))
    result = {"device": str(device), "quick": q, "rows": rows, "train": {"bf16": bf16, "fp32": fp32},
              "loader_images_per_s": rate, "mtcnn": m, "extraction": e, "uniform_loss": u}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    outcome = main()
    failed = [r for r in outcome["rows"] if r["what"].startswith("test suite") and "failed" in r["note"]]
    incomplete = [r for r in outcome["rows"] if r["value"] in ("stopped", "failed")]
    # the training losses too: a rate measured on a run gone NaN is no success
    numbers = [r["value"] for r in outcome["rows"] if isinstance(r["value"], float)]
    numbers += [t["loss"] for t in outcome["train"].values() if t]
    wrong = uniform_loss_failures(outcome["uniform_loss"])
    for line in wrong:
        print(f"gpu_check: {line}", file=sys.stderr)
    sys.exit(1 if failed or incomplete or wrong or not all(map(math.isfinite, numbers)) else 0)
