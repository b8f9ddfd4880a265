"""Preprocessing throughput: our batched pipeline against the earlier port's way, in the same run.

The earlier port called facenet-pytorch's MTCNN once per image in a Python loop (with PyTorch's default
thread count), then aligned and saved. Ours runs the same nets through our cascade (mtcnn.py: the pyramid
and every candidate box resampled from one integral image per batch, no per-box loop) on batches of
same-size images, channels-last; on a CPU each DataLoader worker decodes and detects its own chunk single-threaded,
on a GPU the workers decode and the main process detects. Both use the official SphereFace detector
settings and the same warp, so the landmarks must agree (<= 0.5 px) and only the time may differ.
Wall time is the target; CPU time (this process and its workers) is printed too because it hardly moves
when other programs share the machine. `OMP_NUM_THREADS=1` gives the baseline its best setting on a
busy machine.

    PYTHONPATH=code .venv/bin/python bench/bench_align.py [--images 300] [--device cuda] [--rounds 2]
"""
import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance
from skimage import data

from uniformface.align.face import MIN_FACE_SIZE, SCALE_FACTOR, THRESHOLDS, align_face
from uniformface.base.images import decode_rgb, write_image
from uniformface.align.preprocessing import LANDMARKS_NAME, Options, preprocess, read_landmark_file


def make_photos(root: Path, count: int, seed: int = 0) -> list[str]:
    """`count` varied 250x250 face photos (turned, zoomed, moved, re-lit, mirrored) in LFW-style folders."""
    rng = np.random.default_rng(seed)
    astronaut = Image.fromarray(data.astronaut())
    names = []
    for index in range(count):
        angle, scale = rng.uniform(-25, 25), rng.uniform(0.7, 1.6)
        cx, cy = 226 + rng.uniform(-30, 30), 122 + rng.uniform(-25, 25)
        half = 125 * scale
        photo = astronaut.rotate(angle, center=(226, 122), resample=Image.Resampling.BILINEAR)
        photo = photo.crop((cx - half, cy - half, cx + half, cy + half)).resize((250, 250), Image.Resampling.BILINEAR)
        photo = ImageEnhance.Brightness(photo).enhance(rng.uniform(0.7, 1.3))
        if rng.random() < 0.5:
            photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        identity = f"Person_{index // 10:03d}"
        name = f"{identity}/{identity}_{index % 10 + 1:04d}.jpg"
        (root / identity).mkdir(parents=True, exist_ok=True)
        photo.save(root / name, quality=92)
        names.append(name)
    return names


def earlier_port_way(source: Path, out: Path, names: list[str], device: str) -> dict[str, np.ndarray]:
    """One facenet MTCNN call per image in a Python loop, then align and save."""
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, min_face_size=MIN_FACE_SIZE, thresholds=list(THRESHOLDS), factor=SCALE_FACTOR,
                  device=device)
    found = {}
    for name in names:
        image = decode_rgb(source / name)
        boxes, _, points = mtcnn.detect(image, landmarks=True)
        if boxes is None:
            continue
        boxes = np.asarray(boxes.tolist(), np.float64)
        points = np.asarray(points.tolist(), np.float64)
        centre = np.array([(image.shape[1] - 1) / 2, (image.shape[0] - 1) / 2])
        nearest = np.argmin((((boxes[:, :2] + boxes[:, 2:]) / 2 - centre) ** 2).sum(1))
        found[name] = points[nearest]
        write_image(out / name, align_face(image, points[nearest]))
    return found


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the DataLoader workers): unlike wall time,
    it hardly moves when other programs share the machine."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="photos; few photos mostly time the workers starting up")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed rounds; the best of each is kept")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        names = make_photos(scratch / "photos", args.images)
        baseline_times, batched_times, baseline_cpu, batched_cpu = [], [], [], []
        for round_index in range(args.rounds):
            start, start_cpu = time.perf_counter(), cpu_seconds()
            baseline = earlier_port_way(scratch / "photos", scratch / f"loop{round_index}", names, args.device)
            baseline_times.append(time.perf_counter() - start)
            baseline_cpu.append(cpu_seconds() - start_cpu)

            start, start_cpu = time.perf_counter(), cpu_seconds()
            summary = preprocess(Options(dataset=scratch / "photos", output_dir=scratch / f"batched{round_index}",
                                         device=args.device, workers=args.workers, batch_size=args.batch_size,
                                         fallback="skip", progress=False))
            batched_times.append(time.perf_counter() - start)
            batched_cpu.append(cpu_seconds() - start_cpu)
        batched = read_landmark_file(scratch / f"batched{args.rounds - 1}" / LANDMARKS_NAME)

    common = sorted(set(baseline) & set(batched))
    max_difference = max(np.abs(baseline[n] - batched[n]).max() for n in common)
    loop, ours = min(baseline_times), min(batched_times)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {args.images} photos 250x250, "
          f"workers {args.workers}, rounds {args.rounds} (best of each)")
    print(f"faces found: per-image loop {len(baseline)}, batched {summary.detected}; "
          f"same set: {set(baseline) == set(batched)}")
    print(f"per-image loop (earlier port): {loop:.2f} s wall ({1000 * loop / args.images:.1f} ms/image), "
          f"{min(baseline_cpu):.2f} s CPU")
    print(f"batched pipeline (ours):       {ours:.2f} s wall ({1000 * ours / args.images:.1f} ms/image), "
          f"{min(batched_cpu):.2f} s CPU")
    print(f"speed-up {loop / ours:.2f}x wall (target >= 2x), {min(baseline_cpu) / min(batched_cpu):.2f}x CPU time; "
          f"max landmark difference {max_difference:.4f} px (<= 0.5)")
    print(f"load average while measuring: {open('/proc/loadavg').read().split()[0]}" if Path("/proc/loadavg").exists() else "")
    if set(baseline) != set(batched) or not max_difference <= 0.5:  # NaN fails too
        sys.exit("the two pipelines disagree")


if __name__ == "__main__":
    main()
