"""Verification accuracy of a trained model (SPEC §8): LFW 10-fold, or insightface `.bin` sets.

    python code/test.py --model_path log/<run>/sphereface20_512.pt [--dataset DIR --pairs_path FILE
                        --protocol sphereface|insightface --json FILE]
    python code/test.py --model_path M --bin data/lfw.bin data/cfp_fp.bin data/agedb_30.bin

LFW: prints the per-fold table and the mean; writes `lfw_results.json` beside the model (accuracies,
thresholds, TAR at FAR 1e-3 / 1e-2, ROC AUC, EER, the mean minimum class-center distance, and the
`verify_rule` that verify.py applies) and the ROC curve `lfw_roc.png` beside it.
`--bin`: the insightface protocol on each set, one row per set, stored under "bin" in the same JSON
(earlier LFW results in it are kept). Their 112x112 crops are centre-cropped to 112x96 for a 112x96 model.
`--baseline raw` scores raw pixels, `--baseline untrained` the same network at its initialisation:
the floors a trained model must clear.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from uniformface.checkpoint import atomic_write_text, load_weights  # noqa: E402
from uniformface.config import yaml_load  # noqa: E402
from uniformface.evaluate import (center_stats, evaluate_bin, evaluate_pairs, load_backbone,  # noqa: E402
                                  merge_results, raw_pixel_embedder)
from uniformface.models import build_model  # noqa: E402
from uniformface.report import bin_table, fold_table  # noqa: E402


def run_config(model_path: Path) -> dict:
    saved = model_path.parent / "config.yaml"
    return (yaml_load(saved.read_text()) or {}) if saved.is_file() else {}


def roc_path(results_path: Path) -> Path:
    """lfw_results.json -> lfw_roc.png; r.json -> r_roc.png."""
    stem = results_path.stem.removesuffix("_results")
    return results_path.with_name(f"{stem}_roc.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", help="weights written by train.py ({model_name}_{emb_dim}.pt)")
    parser.add_argument("--dataset", help="aligned test images (default: the run's dataset.test)")
    parser.add_argument("--pairs_path", help="pairs.txt (default: the run's dataset.pairs)")
    parser.add_argument("--protocol", choices=("sphereface", "insightface"), default="sphereface")
    parser.add_argument("--bin", nargs="+", metavar="FILE", help="insightface .bin sets to evaluate instead of LFW")
    parser.add_argument("--json", help="result file (default: lfw_results.json beside the model)")
    parser.add_argument("--allow_missing", action="store_true", help="count pairs with a missing image as wrong")
    parser.add_argument("--baseline", choices=("raw", "untrained"), help="score a baseline instead of the model")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed for --baseline untrained")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)

    model_path = Path(args.model_path) if args.model_path else None
    if model_path is None and args.baseline != "raw":
        parser.error("--model_path is required (except with --baseline raw)")
    if args.bin and len({Path(b).stem for b in args.bin}) != len(args.bin):
        parser.error("--bin: two files share a set name (the name is the file name without .bin)")
    cfg = run_config(model_path) if model_path else {}
    dataset = args.dataset or cfg.get("dataset", {}).get("test") or "data/processed/lfw"
    pairs_path = args.pairs_path or cfg.get("dataset", {}).get("pairs") or "data/pairs.txt"
    out = Path(args.json) if args.json else (model_path.parent / "lfw_results.json" if not args.baseline else None)
    common = dict(batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                  progress=not args.no_progress)

    try:
        embed, label, input_size, extra = _embedder(args, model_path)
        if args.bin:
            results = {}
            for path in args.bin:
                results[Path(path).stem] = evaluate_bin(embed, path, input_size, label=label, **common)
                if results[Path(path).stem]["crop"]:
                    print(f"note: {path}: {results[Path(path).stem]['crop']}")
        else:
            lfw = evaluate_pairs(embed, dataset, pairs_path, protocol=args.protocol, allow_missing=args.allow_missing,
                                 input_size=input_size, roc_png=roc_path(out) if out else None, label=label, **common)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    if args.bin:
        print(f"{label}: insightface protocol, 10 folds")
        print(bin_table(list(results.items())))
        merged = merge_results(_previous(out), bins={k: dict(v, evaluated=label) for k, v in results.items()})
    else:
        lfw.update(extra, model_path=str(model_path) if model_path else None, dataset=str(dataset),
                   pairs_path=str(pairs_path), evaluated=label)
        print(fold_table([(label, lfw)]))
        print(f"{label}: LFW accuracy ({args.protocol} protocol) {100 * lfw['accuracy_mean']:.3f} "
              f"+- {100 * lfw['accuracy_std']:.3f} % over {lfw['n_pairs']} pairs")
        if lfw["auc"] is not None:
            print(f"TAR@FAR=1e-3 {lfw['tar_at_far_1e-3']:.4f}, TAR@FAR=1e-2 {lfw['tar_at_far_1e-2']:.4f}, "
                  f"AUC {lfw['auc']:.4f}, EER {lfw['eer']:.4f}")
        if "mean_min_center_distance" in lfw:
            print(f"mean minimum distance between class centers ({lfw['centers_from']}): "
                  f"{lfw['mean_min_center_distance']:.4f}")
        if lfw["n_missing_pairs"]:
            print(f"warning: {lfw['n_missing_pairs']} pair(s) had a missing image and were counted as wrong")
        lfw["verify_rule"] = lfw.pop("verify_rule")  # its long feature mean last, after what people read
        merged = merge_results(_previous(out), lfw=lfw)
    if out is not None:
        atomic_write_text(out, json.dumps(merged, indent=2))
        print(f"wrote {out}" + (f" and {merged['roc_png']}" if not args.bin and "roc_png" in merged else ""))
    return 0


def _embedder(args, model_path):
    """(network or baseline, its label, its input size or None, extra results such as center spread)."""
    if args.baseline == "raw":
        return raw_pixel_embedder, "raw pixels", None, {}
    if args.baseline == "untrained":
        spec = load_weights(model_path)["spec"]
        torch.manual_seed(args.seed)
        model = build_model(spec["model_name"], spec["emb_dim"], tuple(spec["input_size"])).to(args.device).eval()
        return model, f"{spec['model_name']} untrained", tuple(spec["input_size"]), {}
    model, spec, payload = load_backbone(model_path, args.device)
    return model, f"{spec['model_name']}_{spec['emb_dim']}", tuple(spec["input_size"]), center_stats(payload)


def _previous(path: Path | None) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        previous = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        print(f"warning: {path}:{exc.lineno}: not valid JSON ({exc.msg}); it is replaced", file=sys.stderr)
        return None
    return previous if isinstance(previous, dict) else None


if __name__ == "__main__":
    sys.exit(main())
