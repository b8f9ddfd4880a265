"""Generate the toy face set used by `make demo`: a smoke test of every stage, not a benchmark.

    python code/make_toy_data.py --output data/toy [--seed 0] [--identities 100] [--images_per_identity 15]

writes, deterministically from the seed,
    OUTPUT/train/<0000001>/<001>.jpg         CASIA-like training tree (250x250 JPEGs)
    OUTPUT/lfw/<Toy_Person_001>/<Toy_Person_001_0001>.jpg   a disjoint LFW-like tree
    OUTPUT/pairs.txt                          LFW's format: `10<TAB>30`, then per fold 30 same + 30 different
and then runs MTCNN (official SphereFace settings) on a sample of the images and prints the detection rate.
The faces are built from real photographs that ship with scikit-image and matplotlib (no downloads); see
`uniformface/tools/toydata.py` for how identity is put into the face and nuisance into each image. Exit status
2 for settings that cannot make a set (before anything is written), 1 for a failure while writing (such
as an OUTPUT folder that holds something else), each as one line `make_toy_data.py: error: ...`.
"""
from __future__ import annotations

import dataclasses
import os

from ..base.cli import UsageError, new_parser, run_command
from ..tools.toydata import ToySettings

NAME = "make_toy_data"


def build_parser():
    defaults = ToySettings()
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--output", default="data/toy", help="folder to write (an older toy set there is replaced)")
    parser.add_argument("--seed", type=int, default=0, help="the set's seed: the same seed, the same files")
    parser.add_argument("--identities", type=int, default=defaults.train_identities, help="training identities")
    parser.add_argument("--images_per_identity", type=int, default=defaults.images_per_identity,
                        help="images per training identity")
    parser.add_argument("--lfw_identities", type=int, default=defaults.lfw_identities,
                        help="test identities (split over the folds; disjoint from the training ones)")
    parser.add_argument("--lfw_images", type=int, nargs=2, default=[defaults.lfw_images_min, defaults.lfw_images_max],
                        metavar=("MIN", "MAX"), help="images per test identity, drawn in [MIN, MAX]")
    parser.add_argument("--folds", type=int, default=defaults.folds, help="folds of the pairs file")
    parser.add_argument("--pairs_per_fold", type=int, default=defaults.pairs_per_fold,
                        help="same pairs per fold (and as many different pairs)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="generator processes")
    parser.add_argument("--check_images", type=int, default=60,
                        help="images (half train, half test) on which MTCNN's detection rate is measured; 0: skip")
    parser.add_argument("--device", default="cpu", help="device for the MTCNN check")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def run(args, parser) -> int:
    from ..tools.toydata import detection_check, generate  # the detector check imports torch: only after the arguments

    settings = dataclasses.replace(
        ToySettings(), train_identities=args.identities, images_per_identity=args.images_per_identity,
        lfw_identities=args.lfw_identities, lfw_images_min=args.lfw_images[0], lfw_images_max=args.lfw_images[1],
        folds=args.folds, pairs_per_fold=args.pairs_per_fold)
    try:
        summary = generate(args.output, args.seed, settings, progress=not args.no_progress, workers=args.workers)
    except ValueError as exc:  # settings that cannot make a set (too few identities for the folds, ...)
        raise UsageError(str(exc)) from exc
    print(f"wrote {summary.train_images} training images ({settings.train_identities} identities), "
          f"{summary.lfw_images} test images ({settings.lfw_identities} identities) and {summary.pairs} pairs "
          f"to {summary.output} in {summary.seconds:.1f} s")
    if args.check_images > 0:
        check = detection_check(summary, args.check_images, seed=args.seed, device=args.device,
                                progress=not args.no_progress)
        print(f"MTCNN (min face 20, thresholds 0.6/0.7/0.9, factor 0.85) found a face in {check.found}/{check.total} "
              f"sampled images ({100 * check.rate:.1f} %); median landmark error {check.median_error:.2f} px "
              f"({100 * check.median_error / check.eye_distance:.1f} % of the eye distance)")
    return 0


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv)
