"""Verification accuracy of a trained model (SphereFace's evaluation.m; README, "Real workflow"): LFW 10-fold, or insightface `.bin` sets.

    python code/test.py --model_path log/<run>/sphereface20_512.pt [--dataset DIR --pairs_path FILE
                        --protocol sphereface|insightface --json FILE]
    python code/test.py --model_path M --bin data/lfw.bin data/cfp_fp.bin data/agedb_30.bin

LFW: prints the per-fold table and the mean; writes `lfw_results.json` beside the model (accuracies,
thresholds, TAR at FAR 1e-3 / 1e-2, ROC AUC, EER, the mean minimum class-center distance, and the
`verify_rule` that verify.py applies) and the ROC curve `lfw_roc.png` beside it.
`--bin`: the insightface protocol on each set, one row per set, stored under "bin" in the same JSON
(earlier LFW results in it are kept). Their 112x112 crops are centre-cropped to 112x96 for a 112x96 model.
`--baseline raw` scores raw pixels, `--baseline untrained` the same network at its initialisation:
the floors a trained model must clear. A results file (or ROC figure) at the output path that test.py
did not write is never replaced without `--overwrite`. Errors are one line `test.py: error: ...`
(`--debug`: with the traceback).
"""
from __future__ import annotations

from pathlib import Path

from ..cli import new_parser, run_command
from ..devices import AUTO
from ..registry import BASELINES, PROTOCOLS
from ..report import RESULTS_FILE

NAME = "test"


def build_parser():
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--model_path", help="weights written by train.py ({model_name}_{emb_dim}.pt); "
                                             "required, except with --baseline raw (default: none)")
    parser.add_argument("--dataset",
                        help="aligned test images (default: the run's dataset.test, else data/processed/lfw)")
    parser.add_argument("--pairs_path", help="pairs.txt (default: the run's dataset.pairs, else data/pairs.txt)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOLS[0], help="LFW verification protocol")
    parser.add_argument("--bin", nargs="+", metavar="FILE",
                        help="insightface .bin sets to evaluate instead of LFW (default: none, LFW)")
    parser.add_argument("--json", help=f"result file (default: {RESULTS_FILE} beside the model)")
    parser.add_argument("--allow_missing", action="store_true", help="count pairs with a missing image as wrong")
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


def run(args, parser) -> int:
    model_path = Path(args.model_path) if args.model_path else None
    if model_path is None and args.baseline != "raw":
        parser.error("--model_path is required (except with --baseline raw)")
    if args.bin and len({Path(b).stem for b in args.bin}) != len(args.bin):
        parser.error("--bin: two files share a set name (the name is the file name without .bin)")
    # torch: only after the arguments
    from ..devices import resolve_device
    from ..evaluate import evaluate_model_on_bins, evaluate_model_on_pairs
    from ..report import bin_table, lfw_summary
    from ..trained_network import configured_dataset

    device = str(resolve_device(args.device))
    out = Path(args.json) if args.json else (model_path.parent / RESULTS_FILE if not args.baseline else None)
    common = dict(baseline=args.baseline, seed=args.seed, batch_size=args.batch_size, num_workers=args.workers,
                  device=device, progress=not args.no_progress, overwrite=args.overwrite)
    if args.bin:
        label, results = evaluate_model_on_bins(model_path, args.bin, out, **common)
    else:
        # The run's config.yaml is read only for what the command line leaves open.
        dataset = args.dataset or (model_path and configured_dataset(model_path, "test")) or "data/processed/lfw"
        pairs_path = args.pairs_path or (model_path and configured_dataset(model_path, "pairs")) or "data/pairs.txt"
        label, lfw = evaluate_model_on_pairs(model_path, dataset, pairs_path, out, protocol=args.protocol,
                                             allow_missing=args.allow_missing, **common)

    if args.bin:
        for name, result in results.items():
            if result["crop"]:
                print(f"note: {name}: {result['crop']}")
        print(f"{label}: insightface protocol, 10 folds")
        print(bin_table(list(results.items())))
    else:
        print(lfw_summary(label, lfw, args.protocol))
    if out is not None:
        print(f"wrote {out}" + (f" and {lfw['roc_png']}" if not args.bin and lfw.get("roc_png") else ""))
    return 0


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv)
