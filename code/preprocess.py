"""Detect and align faces: DATASET/<identity>/<file> -> OUTPUT_DIR/<identity>/<file> (same names).

    python code/preprocess.py --dataset data/CASIA-WebFace --output_dir data/processed/CASIA-WebFace
    python code/preprocess.py --dataset data/lfw --output_dir data/processed/lfw --device cuda
    python code/preprocess.py --dataset data/lfw --output_dir data/processed/lfw --landmarks lfw_landmark.txt

Outputs keep the input's relative path and file name; the format follows the extension (.jpg/.jpeg: JPEG
at quality 95, .png: lossless PNG, ...). A face the detector misses is skipped (training sets) or aligned
with the mean landmarks of the same-size images (test sets; `--fallback auto` decides by LFW-style names).
Broken, faceless and fallback files are listed in OUTPUT_DIR/preprocess_report.tsv, the landmarks used in
OUTPUT_DIR/landmarks.txt. The exit status is 0 even when some files are broken or faceless; a rerun
skips the outputs that exist (whatever their size: use a new folder for another --output_size).
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from uniformface.align import DETECTION_MAX_SIDE, MIN_FACE_SIZE, SCALE_FACTOR, THRESHOLDS  # noqa: E402
from uniformface.preprocessing import Options, parse_output_size, preprocess  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help="input tree DATASET/<identity>/<file>")
    parser.add_argument("--output_dir", required=True, help="output tree (mirrors the input's relative paths)")
    parser.add_argument("--output_size", default="112x96", help="rows x cols: 112x96 (SphereFace) or 112x112")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (detector)")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="images per detector call (default 8 on CPU, 128 on CUDA)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="loader processes; on a CPU each also runs its own detector (0: all in this process)")
    parser.add_argument("--landmarks", default=None,
                        help="lfw_landmark.txt-style file (path, x1 y1 ... x5 y5, tab separated): no detector")
    parser.add_argument("--fallback", choices=("auto", "mean", "skip"), default="auto",
                        help="missed faces: mean = align with the mean landmarks of same-size images (test sets), "
                             "skip (training sets), auto = mean when every file is named <dir>/<dir>_NNNN.<ext>")
    parser.add_argument("--min_face_size", type=int, default=MIN_FACE_SIZE)
    parser.add_argument("--thresholds", type=float, nargs=3, default=list(THRESHOLDS), metavar=("P", "R", "O"))
    parser.add_argument("--factor", type=float, default=SCALE_FACTOR, help="MTCNN pyramid scale factor")
    parser.add_argument("--max_side", type=int, default=DETECTION_MAX_SIDE,
                        help="larger images are reduced to this longer side before detection and warping")
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch threads for the detector (default: PyTorch's choice; 1 is best on a busy machine)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    try:
        output_size = parse_output_size(args.output_size)
    except ValueError as exc:
        parser.error(str(exc))
    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available in this PyTorch")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    if args.landmarks is not None and not Path(args.landmarks).is_file():
        parser.error(f"--landmarks {args.landmarks}: no such file")

    if args.threads is not None:
        import torch
        torch.set_num_threads(max(1, args.threads))
    options = Options(dataset=Path(args.dataset), output_dir=Path(args.output_dir), output_size=output_size,
                      device=args.device, batch_size=args.batch_size, workers=max(0, args.workers),
                      landmarks=Path(args.landmarks) if args.landmarks else None, fallback=args.fallback,
                      min_face_size=args.min_face_size, thresholds=tuple(args.thresholds), factor=args.factor,
                      max_side=args.max_side, progress=not args.no_progress)
    try:
        summary = preprocess(options)
    except (FileNotFoundError, ValueError) as exc:
        print(f"preprocess: error: {exc}", file=sys.stderr)
        return 2
    print(summary.detection_rate_line("landmark-file coverage" if args.landmarks else "detection rate"))
    print(f"{summary.line()} (report: {summary.report_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
