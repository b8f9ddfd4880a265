"""`make figure`: UniformFace's hypersphere picture on the toy set, in a few minutes on a CPU.

Runs the same commands a user runs (printed before each step): make_toy_data.py (10 identities of 40
images) -> preprocess.py (MTCNN) -> a per-identity split (images 1-30 train, 31-40 held out) -> train.py
(configs/figure.yaml: a 3-dimensional embedding) with alpha = 0 and with the default uniform loss ->
plot_sphere.py on the held-out images, both runs side by side -> plot_runs.py, their training curves.
Writes LOGDIR/hypersphere.png and LOGDIR/curves.png. Like the demo, it runs the scripts and the config of
the source tree it sits in (code/), so it is not installed as a command.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from ..base.cli import ScriptError, run_command
from ..base.images import IMAGE_EXTENSIONS
from .demo import CODE, step, toy_parser

NAME = "figure"
IDENTITIES = 10
IMAGES_PER_IDENTITY = 40
TRAIN_IMAGES = 30  # per identity: the generator's images 1..30 train, the rest are held out
RUNS = (("alpha0", ["--set", "alpha=0"]), ("uniform", []))  # the config as it is: the default uniform loss


def build_parser():
    return toy_parser(NAME, __doc__, "data/figure", "log/figure", "the two runs and the figures (runs replaced on each "
                      "call)", runs="both training runs")


def split_held_out(aligned: Path, output: Path, train_images: int = TRAIN_IMAGES) -> tuple[int, int]:
    """OUTPUT/train/<class>/ and OUTPUT/test/<class>/ from the aligned tree ALIGNED/<class>/<NNN>.jpg: an
    image whose generator number NNN is at most `train_images` trains, the others are held out (a face
    the detector missed leaves a gap, never moves an image from one side to the other). Files are hard
    links where the file system allows, else copies. OUTPUT is made anew. Returns (train, test) counts."""
    if output.exists():
        shutil.rmtree(output)
    counts = [0, 0]
    for folder in sorted(p for p in aligned.iterdir() if p.is_dir()):
        for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
            if not image.stem.isdigit():
                raise ValueError(f"{image}: not a toy training image name (<number>{image.suffix})")
            held_out = int(image.stem) > train_images
            target = output / ("test" if held_out else "train") / folder.name / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(image, target)
            except OSError:
                shutil.copy2(image, target)
            counts[held_out] += 1
    if not all(counts):
        raise ValueError(f"{aligned}: no images on one side of the split (train {counts[0]}, test {counts[1]})")
    return counts[0], counts[1]


def run(args, parser) -> int:
    data, logdir = Path(args.data), Path(args.logdir)
    config = CODE / "configs" / "figure.yaml"
    start = time.perf_counter()
    try:
        step(str(CODE / "make_toy_data.py"), "--output", str(data), "--seed", str(args.seed),
             "--identities", str(IDENTITIES), "--images_per_identity", str(IMAGES_PER_IDENTITY),
             "--lfw_identities", "2", "--folds", "1", "--pairs_per_fold", "1", "--check_images", "0",
             "--no_progress")
        step(str(CODE / "preprocess.py"), "--dataset", str(data / "train"), "--output_dir",
             str(data / "processed" / "train"), "--no_progress")
        trained, held_out = split_held_out(data / "processed" / "train", data / "split")
        print(f"\nsplit {data / 'processed' / 'train'}: {trained} training images (numbers 1-{TRAIN_IMAGES}) in "
              f"{data / 'split' / 'train'}, {held_out} held out in {data / 'split' / 'test'}", flush=True)
        models = []
        for name, overrides in RUNS:
            shutil.rmtree(logdir / name, ignore_errors=True)  # a fresh run each time the figure is made
            step(str(CODE / "train.py"), "--config", str(config), "--logdir", str(logdir), "--run_name", name,
                 "--set", f"seed={args.seed}", "--set", f"dataset.train={data / 'split' / 'train'}",
                 "--set", f"dataset.test={data / 'split' / 'test'}", "--set", f"dataset.pairs={data / 'pairs.txt'}",
                 *overrides, "--no_progress")
            models.append(str(logdir / name / "sphereface4_3.pt"))
        sphere, curves = logdir / "hypersphere.png", logdir / "curves.png"
        step(str(CODE / "plot_sphere.py"), "--model_path", *models, "--dataset", str(data / "split" / "test"),
             "--output", str(sphere), "--device", "cpu", "--no_progress", "--overwrite")
        step(str(CODE / "plot_runs.py"), *(str(Path(m).parent) for m in models), "--output", str(curves),
             "--overwrite")
    except subprocess.CalledProcessError as exc:
        raise ScriptError(f"failed at: {' '.join(exc.cmd[1:])}") from exc
    print(f"\nhypersphere figure: {sphere}\ntraining curves: {curves}\n"
          f"figure took {time.perf_counter() - start:.0f} s")
    return 0


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv)
