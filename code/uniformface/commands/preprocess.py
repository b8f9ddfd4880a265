"""Detect and align faces: DATASET/<identity>/<file> -> OUTPUT_DIR/<identity>/<file> (same names).

    python code/preprocess.py --dataset data/CASIA-WebFace --output_dir data/processed/CASIA-WebFace
    python code/preprocess.py --dataset data/lfw --output_dir data/processed/lfw --device cuda
    python code/preprocess.py --dataset data/lfw --output_dir data/processed/lfw --landmarks lfw_landmark.txt
    python code/preprocess.py --dataset data/lfw --output_dir data/processed/lfw --pairs data/lfw/pairs.txt

Outputs keep the input's relative path and file name; the format follows the extension (.jpg/.jpeg: JPEG
at quality 95, .png: lossless PNG, ...). A face the detector misses is skipped (training sets) or aligned
with the mean landmarks of the same-size images (test sets). `--fallback auto` decides by the names: mean
when more than half of the image files are named <dir>/<dir>_NNNN.<ext> as in LFW, skip otherwise; the
choice and its counts are printed first. `--pairs PAIRS` names the test set instead: mean for exactly the
images LFW's pairs.txt PAIRS needs, skip elsewhere. A fallback crop never trains: train.py and
pack_dataset.py leave out the crops the report lists as fallback, and say how many. Broken, faceless and
fallback files are listed in OUTPUT_DIR/preprocess_report.tsv, the landmarks used in
OUTPUT_DIR/landmarks.txt; a rerun after a kill completes both exactly as an uninterrupted run would have
written them. Identity folders reached through a symbolic link are aligned too (a link that loops is
reported as not_followed). Images over --max_megapixels (default: Pillow's decompression-bomb limit,
178.96 megapixels) are reported broken; raise it for genuine large photos. The exit status is 0 even when
some files are broken or faceless (1 when every image of the run was broken or the detector failed on
every image, 2 for a usage error, such as an OUTPUT_DIR inside DATASET or holding it); a rerun skips the
outputs that exist (whatever their size: use a new folder for another --output_size). One run at a time
writes into an OUTPUT_DIR: a second one is refused at once, naming the first (its lock is the hidden
OUTPUT_DIR/.lock, which a killed run does not keep).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..base.cli import ScriptError, UsageError, new_parser, run_command
from ..base.defaults import DETECTION_MAX_SIDE, MIN_FACE_SIZE, SCALE_FACTOR, SMALLEST_MIN_FACE_SIZE, THRESHOLDS
from ..base.images import PILLOW_MAX_PIXELS
from ..base.registry import FALLBACKS

NAME = "preprocess"


def build_parser():
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--dataset", required=True, help="input tree DATASET/<identity>/<file>")
    parser.add_argument("--output_dir", required=True, help="output tree (mirrors the input's relative paths)")
    parser.add_argument("--output_size", default="112x96", help="rows x cols: 112x96 (SphereFace) or 112x112")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (detector)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="images per detector call (default 8 on CPU, 128 on CUDA)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="loader processes; on a CPU each also runs its own detector (0: all in this process)")
    parser.add_argument("--landmarks", default=None,
                        help="lfw_landmark.txt-style file (path, x1 y1 ... x5 y5, tab separated): no detector "
                             "(default: none, the detector finds the landmarks)")
    parser.add_argument("--fallback", choices=FALLBACKS, default="auto",
                        help="missed faces: mean = align with the mean landmarks of same-size images (test sets), "
                             "skip (training sets), auto = mean when more than half of the image files are named "
                             "<dir>/<dir>_NNNN.<ext> (the choice is printed)")
    parser.add_argument("--pairs", default=None,
                        help="LFW-format pairs.txt of this test set: missed faces of the images it names are aligned "
                             "with the mean landmarks, all others skipped (instead of --fallback; default: none)")
    parser.add_argument("--min_face_size", type=int, default=MIN_FACE_SIZE,
                        help=f"smallest face to find, in pixels (at least {SMALLEST_MIN_FACE_SIZE}, the P-net's "
                             "window; default %(default)s)")
    parser.add_argument("--thresholds", type=float, nargs=3, default=list(THRESHOLDS), metavar=("P", "R", "O"),
                        help="MTCNN's P-, R- and O-net face score thresholds")
    parser.add_argument("--factor", type=float, default=SCALE_FACTOR, help="MTCNN pyramid scale factor")
    parser.add_argument("--max_side", type=int, default=DETECTION_MAX_SIDE,
                        help="larger images are reduced to this longer side before detection and warping (0: never)")
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch threads for the detector (default: PyTorch's choice; 1 is best on a busy "
                             "machine)")
    parser.add_argument("--max_megapixels", type=float, default=PILLOW_MAX_PIXELS / 1e6,
                        help="larger images are reported broken as possible decompression bombs (default: "
                             "Pillow's limit, %(default).2f); raise it for genuine large photos, inf for no limit")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a preprocess_report.tsv or landmarks.txt in OUTPUT_DIR that this tool did not "
                             "write (aligned outputs that exist are never replaced)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def run(args, parser) -> int:
    # torch and the detector: only after the arguments
    from ..base.locks import FolderBusy
    from ..base.devices import resolve_device
    from ..align.preprocessing import (DETECTOR_FAILED, Options, check_folders, parse_output_size, preprocess,
                                       validate_options)
    from ..eval.pairs import read_pairs, unique_images

    try:
        output_size = parse_output_size(args.output_size)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        resolve_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    if args.landmarks is not None and not Path(args.landmarks).is_file():
        parser.error(f"--landmarks {args.landmarks}: no such file")
    if args.pairs is not None and not Path(args.pairs).is_file():
        parser.error(f"--pairs {args.pairs}: no such file")
    if args.pairs is not None and args.fallback != "auto":
        parser.error(f"--pairs decides the fallback (mean for the images the pairs need, skip elsewhere): "
                     f"drop --fallback {args.fallback}")
    try:
        check_folders(Path(args.dataset), Path(args.output_dir))
    except ValueError as exc:  # one line, as docs/RELIABILITY.md's hostile-input table promises, and status 2
        raise UsageError(str(exc)) from None
    # a malformed pairs file is an error naming its line, before any work
    pair_images = frozenset(unique_images(read_pairs(args.pairs))) if args.pairs is not None else None

    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    options = Options(dataset=Path(args.dataset), output_dir=Path(args.output_dir), output_size=output_size,
                      device=args.device, batch_size=args.batch_size, workers=max(0, args.workers),
                      landmarks=Path(args.landmarks) if args.landmarks else None, fallback=args.fallback,
                      min_face_size=args.min_face_size, thresholds=tuple(args.thresholds), factor=args.factor,
                      max_side=args.max_side, progress=not args.no_progress,
                      max_pixels=None if args.max_megapixels == PILLOW_MAX_PIXELS / 1e6 else args.max_megapixels * 1e6,
                      overwrite=args.overwrite, announce=print, pair_images=pair_images,
                      pairs_file=Path(args.pairs) if args.pairs else None)
    try:
        validate_options(options)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        summary = preprocess(options)
    except FolderBusy as exc:  # another run holds OUTPUT_DIR: nothing was read or touched
        raise ScriptError(str(exc)) from None
    print(summary.detection_rate_line("landmark-file coverage" if args.landmarks else "detection rate"))
    print(f"{summary.line()} (report: {summary.report_path})")
    if summary.detector_failures and not summary.detection_attempts:
        first = next(detail for _, status, detail in summary.rows
                     if status == "broken" and detail.startswith(DETECTOR_FAILED))
        raise ScriptError(f"the face detector failed on all {summary.detector_failures} decoded images "
                          f"(first: {first}); check --min_face_size, --thresholds and --factor")
    if summary.broken and not summary.detection_attempts and not summary.already_done:
        path, _, detail = next(row for row in summary.rows if row[1] == "broken")
        raise ScriptError(f"all {summary.broken} image files of {args.dataset} are broken, nothing was aligned "
                          f"(first: {path}: {detail}); each is listed in {summary.report_path}")
    return 0


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv)
