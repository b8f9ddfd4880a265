"""Verification accuracy of a trained model (SphereFace's evaluation.m; docs/CLI.md): LFW 10-fold,
insightface `.bin` sets, YouTube Faces, IJB-B / IJB-C 1:1.

    python code/test.py --model_path log/<run>/sphereface20_512.pt [--dataset DIR --pairs_path FILE
                        --protocol sphereface|insightface --json FILE]
    python code/test.py --model_path M --bin data/lfw.bin data/cfp_fp.bin data/agedb_30.bin
    python code/test.py --model_path M --benchmark ytf --dataset data/processed/ytf --pairs_path splits.txt
                        [--frames_per_video N]
    python code/test.py --model_path M --benchmark ijbc --dataset IJBC/loose_crop --meta IJBC/meta
                        [--detector_score] [--tar_rule insightface]

LFW: prints the per-fold table and the mean; writes `lfw_results.json` beside the model (accuracies,
thresholds, TAR at FAR 1e-3 / 1e-2, ROC AUC, EER, the mean minimum class-center distance, and the
`verify_rule` that verify.py applies) and the ROC curve `lfw_roc.png` beside it.
`--bin`: the insightface protocol on each set, one row per set, stored under "bin" in the same JSON
(earlier LFW results in it are kept). Their 112x112 crops are centre-cropped to 112x96 for a 112x96 model.
`--benchmark ytf`: the frames of `aligned_images_DB` aligned by preprocess.py, one feature per video (the
mean of its frames' features), the splits of `splits.txt` as the folds; per-split table and mean, stored
under "ytf" with `ytf_roc.png`. `--benchmark ijbb|ijbc`: insightface's loose crops aligned from the meta
files' landmarks, template features, TAR at FAR 1e-6 ... 1e-1 (by default the best TAR whose FAR does
not exceed the target; `--tar_rule insightface`: the ROC point insightface's ijb_11.py table reports),
stored under "ijbb"/"ijbc" with `ijbc_roc.png`. Their features are kept beside the results
(`ytf_features.npy`, `ijbc_features.npy`) and reused while the weights file is unchanged; a killed run
resumes where it stopped.
`--baseline raw` scores raw pixels, `--baseline untrained` the same network at its initialisation:
the floors a trained model must clear. A results file (or ROC figure) at the output path that test.py
did not write is never replaced without `--overwrite`.
"""
from __future__ import annotations

from pathlib import Path

from ..base.cli import new_parser, run_command
from ..base.devices import AUTO
from ..base.registry import BASELINES, BENCHMARKS, PROTOCOLS
from ..base.registry import TAR_RULES
from ..tools.report import RESULTS_FILE, accuracy_lines, bin_table, lfw_summary

NAME = "test"


def build_parser():
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--model_path", help="weights written by train.py ({model_name}_{emb_dim}.pt); "
                                             "required, except with --baseline raw (default: none)")
    parser.add_argument("--benchmark", choices=BENCHMARKS, default=BENCHMARKS[0],
                        help="lfw: pairs.txt (or --bin sets); ytf: YouTube Faces splits.txt; ijbb, ijbc: IJB-B, IJB-C "
                             "1:1 verification")
    parser.add_argument("--dataset",
                        help="aligned test images (default: the run's dataset.test, else data/processed/lfw); "
                             "ytf: the aligned frames, <name>/<video>/<frame>; ijbb/ijbc: the loose crops")
    parser.add_argument("--pairs_path", help="pairs.txt (default: the run's dataset.pairs, else data/pairs.txt); "
                                             "ytf: splits.txt (required)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOLS[0],
                        help="verification protocol of LFW and YTF")
    parser.add_argument("--bin", nargs="+", metavar="FILE",
                        help="insightface .bin sets to evaluate instead of LFW (default: none, LFW)")
    parser.add_argument("--meta", metavar="DIR",
                        help="ijbb/ijbc: the folder of insightface's meta files (<set>_face_tid_mid.txt, "
                             "<set>_template_pair_label.txt, <set>_name_5pts_score.txt); required there "
                             "(default: none)")
    parser.add_argument("--frames_per_video", type=int, metavar="N",
                        help="ytf: use N frames of each video, evenly spaced (default: all)")
    parser.add_argument("--detector_score", action="store_true",
                        help="ijbb/ijbc: weight each image's feature by its detector score before pooling")
    parser.add_argument("--tar_rule", choices=TAR_RULES, default=TAR_RULES[0],
                        help="ijbb/ijbc: TAR at each FAR target: at_most, the best TAR whose FAR does not exceed "
                             "the target; insightface, the ROC point nearest the target that insightface's "
                             "ijb_11.py reports (its FAR may exceed the target)")
    parser.add_argument("--json", help=f"result file (default: {RESULTS_FILE} beside the model)")
    parser.add_argument("--allow_missing", action="store_true",
                        help="count pairs with a missing image (ytf: a video without frames) as wrong; ijbb/ijbc: "
                             "leave missing crops out of their templates")
    parser.add_argument("--baseline", choices=BASELINES,
                        help="score a baseline instead of the model (default: none, the model)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed for --baseline untrained")
    parser.add_argument("--batch_size", type=int, default=128, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes that decode the images")
    parser.add_argument("--device", default=AUTO, help="cpu, cuda, cuda:N, or auto (cuda when there is a GPU)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a --json file or ROC figure that is not a results file of test.py")
    return parser


def check_benchmark_options(args, parser) -> None:
    """Each benchmark's options, and none of another's (a flag that would be ignored is an error)."""
    benchmark = args.benchmark
    given = {"--bin": args.bin, "--meta": args.meta, "--frames_per_video": args.frames_per_video is not None,
             "--detector_score": args.detector_score, "--protocol": args.protocol != PROTOCOLS[0],
             "--pairs_path": args.pairs_path is not None, "--tar_rule": args.tar_rule != TAR_RULES[0]}
    ijb = {"--meta", "--detector_score", "--tar_rule"}
    allowed = {"lfw": {"--bin", "--protocol", "--pairs_path"}, "ijbb": ijb, "ijbc": ijb,
               "ytf": {"--frames_per_video", "--protocol", "--pairs_path"}}[benchmark]
    foreign = [flag for flag, value in given.items() if value and flag not in allowed]
    if foreign:
        parser.error(f"{', '.join(foreign)} does not apply to --benchmark {benchmark}")
    if benchmark == "ytf" and not (args.dataset and args.pairs_path):
        parser.error("--benchmark ytf needs --dataset (the aligned frames, <name>/<video>/<frame>) and --pairs_path "
                     "(YouTube Faces' splits.txt)")
    if benchmark in ("ijbb", "ijbc") and not (args.dataset and args.meta):
        parser.error(f"--benchmark {benchmark} needs --dataset (insightface's loose crops) and --meta (the folder of "
                     "its meta files)")
    if args.frames_per_video is not None and args.frames_per_video < 1:
        parser.error("--frames_per_video must be a positive number of frames")


def run(args, parser) -> int:
    model_path = Path(args.model_path) if args.model_path else None
    if model_path is None and args.baseline != "raw":
        parser.error("--model_path is required (except with --baseline raw)")
    check_benchmark_options(args, parser)
    if args.bin and len({Path(b).stem for b in args.bin}) != len(args.bin):
        parser.error("--bin: two files share a set name (the name is the file name without .bin)")
    # torch: only after the arguments
    from ..base.devices import resolve_device
    from ..eval.evaluate import evaluate_model_on_bins, evaluate_model_on_pairs
    from ..eval.trained_network import configured_dataset

    device = str(resolve_device(args.device))
    out = Path(args.json) if args.json else (model_path.parent / RESULTS_FILE if not args.baseline else None)
    common = dict(baseline=args.baseline, seed=args.seed, batch_size=args.batch_size, num_workers=args.workers,
                  device=device, progress=not args.no_progress, overwrite=args.overwrite)
    result = {}  # what was evaluated; the last line names its ROC figure (--bin sets draw none)
    if args.benchmark == "ytf":
        from ..eval.ytf import evaluate_model_on_ytf

        label, result = evaluate_model_on_ytf(model_path, args.dataset, args.pairs_path, out, protocol=args.protocol,
                                              frames_per_video=args.frames_per_video,
                                              allow_missing=args.allow_missing, **common)
        summary = ytf_summary(label, result)
    elif args.benchmark in ("ijbb", "ijbc"):
        from ..eval.ijb import evaluate_model_on_ijb

        label, result = evaluate_model_on_ijb(model_path, args.benchmark, args.dataset, args.meta, out,
                                              detector_score=args.detector_score, allow_missing=args.allow_missing,
                                              tar_rule=args.tar_rule, **common)
        summary = ijb_summary(label, result)
    elif args.bin:
        label, results = evaluate_model_on_bins(model_path, args.bin, out, **common)
        notes = [f"note: {name}: {r['crop']}" for name, r in results.items() if r["crop"]]
        summary = "\n".join([*notes, f"{label}: insightface protocol, 10 folds", bin_table(list(results.items()))])
    else:
        # The run's config.yaml is read only for what the command line leaves open.
        dataset = args.dataset or (model_path and configured_dataset(model_path, "test")) or "data/processed/lfw"
        pairs_path = args.pairs_path or (model_path and configured_dataset(model_path, "pairs")) or "data/pairs.txt"
        label, result = evaluate_model_on_pairs(model_path, dataset, pairs_path, out, protocol=args.protocol,
                                                allow_missing=args.allow_missing, **common)
        summary = lfw_summary(label, result, args.protocol)
    print(summary)
    if out is not None:
        print(f"wrote {out}" + (f" and {result['roc_png']}" if result.get("roc_png") else ""))
    return 0


def ytf_summary(label: str, ytf: dict) -> str:
    """The per-split table, the mean, the ROC figures, the frames used, and a warning for pairs counted as
    wrong because a video had no frames."""
    frames = "all frames" if ytf["frames_per_video"] is None else f"at most {ytf['frames_per_video']} frames"
    lines = accuracy_lines(label, ytf, "YouTube Faces", ytf["protocol"],
                           f"over {ytf['n_pairs']} pairs in {ytf['n_folds']} splits "
                           f"({ytf['n_videos']} videos, {ytf['n_frames']} frames: {frames} per video)")
    if "features" in ytf:
        lines.append(f"video features: {ytf['features']} (reused: {ytf['features_reused']})")
    if ytf.get("n_missing_pairs"):
        lines.append(f"warning: {ytf['n_missing_pairs']} pair(s) had a video without frames and were counted as wrong")
    return "\n".join(lines)


def ijb_summary(label: str, ijb: dict) -> str:
    """TAR at each FAR as a table row (and the rule that read it off the ROC), AUC and EER, the feature
    cache, and what --allow_missing left out."""
    from ..eval.ijb import FAR_TARGETS, far_key

    width = max(18, len(label))
    header = f"| {'':<{width}} | " + " | ".join(f"{f'{far:.0e}':>6}" for far in FAR_TARGETS) + " |"
    rule = f"| {'-' * width} | " + " | ".join("------" for _ in FAR_TARGETS) + " |"
    row = f"| {label:<{width}} | " + " | ".join(f"{100 * ijb[far_key(far)]:6.2f}" for far in FAR_TARGETS) + " |"
    weighting = "detector-score weighted" if ijb["detector_score_weighting"] else "unweighted"
    tar_rule = {"at_most": "the best TAR with FAR <= target",
                "insightface": "insightface's rule: the kept ROC point nearest the target"}[ijb["tar_rule"]]
    lines = [f"{ijb['set']} 1:1 verification: TAR (%) at FAR, {ijb['n_pairs']} template pairs, {ijb['n_templates']} "
             f"templates, {ijb['n_images']} images ({weighting}, {ijb['crop']} crops)",
             f"TAR rule: {ijb['tar_rule']} ({tar_rule})", header, rule, row,
             f"AUC {ijb['auc']:.6f}, EER {ijb['eer']:.6f}"]
    if "features" in ijb:
        lines.append(f"image features: {ijb['features']} (reused: {ijb['features_reused']})")
    if ijb.get("n_missing_images"):
        lines.append(f"warning: {ijb['n_missing_images']} image(s) missing were left out of their templates; "
                     f"{ijb['n_pairs_without_features']} pair(s) had a template with no image left (rejected)")
    return "\n".join(lines)


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv)
