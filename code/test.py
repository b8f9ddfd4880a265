"""LFW 10-fold verification of a trained model (SPEC §8).

    python code/test.py --model_path log/<run>/sphereface20_512.pt [--dataset DIR --pairs_path FILE
                        --protocol sphereface|insightface --json FILE]

Prints the per-fold table and the mean; writes `lfw_results.json` beside the model.
`--baseline raw` scores raw pixels, `--baseline untrained` the same network at its initialisation:
the floors a trained model must clear.
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import yaml  # noqa: E402

from uniformface.checkpoint import atomic_write_text, load_weights  # noqa: E402
from uniformface.evaluate import evaluate_pairs, load_backbone, raw_pixel_embedder  # noqa: E402
from uniformface.models import build_model  # noqa: E402
from uniformface.report import fold_table  # noqa: E402


def run_config(model_path: Path) -> dict:
    saved = model_path.parent / "config.yaml"
    return yaml.safe_load(saved.read_text()) if saved.is_file() else {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", help="weights written by train.py ({model_name}_{emb_dim}.pt)")
    parser.add_argument("--dataset", help="aligned test images (default: the run's dataset.test)")
    parser.add_argument("--pairs_path", help="pairs.txt (default: the run's dataset.pairs)")
    parser.add_argument("--protocol", choices=("sphereface", "insightface"), default="sphereface")
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
    cfg = run_config(model_path) if model_path else {}
    dataset = args.dataset or cfg.get("dataset", {}).get("test") or "data/processed/lfw"
    pairs_path = args.pairs_path or cfg.get("dataset", {}).get("pairs") or "data/pairs.txt"

    try:
        if args.baseline == "raw":
            embed, label, extra = raw_pixel_embedder, "raw pixels", {}
        elif args.baseline == "untrained":
            spec = load_weights(model_path)["spec"]
            torch.manual_seed(args.seed)
            model = build_model(spec["model_name"], spec["emb_dim"], tuple(spec["input_size"])).to(args.device).eval()
            embed, label, extra = model, f"{spec['model_name']} untrained", {}
        else:
            model, spec, payload = load_backbone(model_path, args.device)
            embed, label, extra = model, f"{spec['model_name']}_{spec['emb_dim']}", _center_stats(payload)
        result = evaluate_pairs(embed, dataset, pairs_path, protocol=args.protocol, allow_missing=args.allow_missing,
                                batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                                progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result.update(extra, model_path=str(model_path) if model_path else None, dataset=str(dataset),
                  pairs_path=str(pairs_path), evaluated=label)

    print(fold_table([(label, result)]))
    print(f"{label}: LFW accuracy ({args.protocol} protocol) {100 * result['accuracy_mean']:.3f} "
          f"+- {100 * result['accuracy_std']:.3f} % over {result['n_pairs']} pairs")
    if result["n_missing_pairs"]:
        print(f"warning: {result['n_missing_pairs']} pair(s) had a missing image and were counted as wrong")
    out = Path(args.json) if args.json else (model_path.parent / "lfw_results.json" if not args.baseline else None)
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=2))
        print(f"wrote {out}")
    return 0


def _center_stats(payload: dict) -> dict:
    """The earlier port's second table: mean distance from each class center to its nearest other."""
    from uniformface.centers import mean_min_distance

    if "centers" in payload:
        centers = payload["centers"][payload["centers_initialized"]]
        return {"mean_min_center_distance": float(mean_min_distance(centers)), "centers_from": "feature centers"}
    if "head" in payload and "weight" in payload["head"]:
        return {"mean_min_center_distance": float(mean_min_distance(payload["head"]["weight"])),
                "centers_from": "head weights"}
    return {}


if __name__ == "__main__":
    sys.exit(main())
