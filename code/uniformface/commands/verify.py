"""Are two photos the same person?

    python code/verify.py a.jpg b.jpg --model_path log/<run>/sphereface20_512.pt [--threshold T]

Both photos are aligned like the training data (MTCNN, most central face, SphereFace template), embedded
with the flip of the model's evaluation protocol, and compared by cosine. The decision uses the rule
test.py stored in lfw_results.json beside the model (`verify_rule`: for the sphereface protocol the LFW
feature mean, subtracted before the cosine, and the evaluation.m threshold fitted on all LFW pairs), or
`--threshold T` (same person iff cosine > T). A photo without a face is an error naming it, as is a rule
whose numbers give no finite cosine or features that are not finite (weights holding NaN): no verdict
is printed from a NaN.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..base.cli import new_parser, run_command
from ..base.devices import AUTO
from ..tools.report import RESULTS_FILE

NAME = "verify"


def build_parser():
    parser = new_parser(NAME, __doc__)
    parser.add_argument("photos", nargs=2, metavar="PHOTO", help="two photos (any size; faces are found and aligned)")
    parser.add_argument("--model_path", required=True, help="weights written by train.py")
    parser.add_argument("--threshold", type=float,
                        help="same person iff cosine > THRESHOLD (default: the model's LFW run)")
    parser.add_argument("--results",
                        help=f"results file holding verify_rule (default: {RESULTS_FILE} beside the model)")
    parser.add_argument("--device", default=AUTO, help="cpu, cuda, cuda:N, or auto (cuda when there is a GPU)")
    return parser


def run(args, parser) -> int:
    if args.threshold is not None and not math.isfinite(args.threshold):
        parser.error(f"--threshold: expected a finite number, got {args.threshold}")
    # torch and the detector: only after the arguments
    from ..align.face import FaceDetector
    from ..base.devices import resolve_device
    from ..eval.trained_network import load_backbone
    from ..eval.two_photo_check import Rule, align_photos, face_features, load_rule, pair_cosine

    model_path = Path(args.model_path)
    results = Path(args.results) if args.results else model_path.parent / RESULTS_FILE
    # Everything that is cheap to check comes before the weights and the detector are loaded: a missing
    # photo or results file is reported at once, not after the slow part.
    absent = [photo for photo in args.photos if not Path(photo).is_file()]
    if absent:
        raise FileNotFoundError(f"photo not found (or not a file): {', '.join(absent)}")
    device = str(resolve_device(args.device))
    if results.is_file():
        rule = load_rule(results)
    elif args.threshold is None:
        raise FileNotFoundError(f"{results} not found: run test.py --model_path {model_path} first "
                                "(it stores the LFW threshold), or pass --threshold")
    else:
        rule = Rule("sphereface", None, None, "no results file: plain [f, f_flip], no mean subtracted")
    model, spec, _ = load_backbone(model_path, device)
    faces = align_photos(args.photos, spec["input_size"], FaceDetector(device=device))
    try:
        features = face_features(model, faces, rule.protocol, device)  # NaN or inf features: a ValueError
    except ValueError as exc:  # the rule's protocol is checked when it is read: this is the weights' doing
        raise ValueError(f"{model_path}: {exc}") from None
    # the features are finite: what still stands between them and a cosine is the stored mean, if any
    source = results if rule.feature_mean is not None else model_path
    try:
        score = pair_cosine(features[0], features[1], rule.feature_mean)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    threshold = args.threshold if args.threshold is not None else rule.threshold
    if not (math.isfinite(score) and math.isfinite(threshold)):  # no verdict from a NaN, whatever made it
        raise ValueError(f"{source}: the cosine {score} or the threshold {threshold} is not a finite number: "
                         "no verdict")
    origin = "--threshold" if args.threshold is not None else rule.source
    features_kind = ("[f, f_flip] minus the LFW feature mean" if rule.feature_mean is not None else
                     "[f, f_flip]" if rule.protocol == "sphereface" else "normalise(f + f_flip)")
    print(f"cosine {score:.6f} ({rule.protocol} protocol features: {features_kind})")
    print(f"threshold {threshold:.6f} ({origin})")
    print(f"{'same person' if score > threshold else 'different people'}: {args.photos[0]} vs {args.photos[1]}")
    return 0


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv)
