"""Export a trained embedding network to ONNX and check it against PyTorch with onnxruntime.

    python code/export.py --model_path log/<run>/sphereface20_512.pt [--output M.onnx] [--opset 17]
                          [--tolerance 1e-4] [--no_check]

The ONNX graph maps float32 (batch, 3, 112, 96) RGB pixels normalised as (x - 127.5) / 128 to the
embedding (batch axis dynamic); its metadata records the model spec and that normalisation. Exit 1 when
onnxruntime's outputs differ from PyTorch's by more than the tolerance (relative to the largest |value|)
or hold NaN or inf; weights whose PyTorch embeddings are not finite are refused before anything is written.
An existing --output is not replaced without --overwrite. Needs the `onnx` and `onnxruntime` packages
(`pip install .[export]`).
"""
from __future__ import annotations

from pathlib import Path

from ..base.cli import ScriptError, new_parser, run_command
from ..base.defaults import DEFAULT_OPSET, DEFAULT_TOLERANCE
from ..base.paths import ensure_writable, refuse_overwrite

NAME = "export"


def build_parser():
    parser = new_parser(NAME, __doc__)
    parser.add_argument("--model_path", required=True, help="weights written by train.py ({model_name}_{emb_dim}.pt)")
    parser.add_argument("--output", help="ONNX file (default: the model path with .onnx)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (7..20)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest |onnx - torch| allowed, relative to the largest |embedding|")
    parser.add_argument("--no_check", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    return parser


def run(args, parser) -> int:
    model_path = Path(args.model_path)
    output = Path(args.output) if args.output else model_path.with_suffix(".onnx")
    if output.resolve() == model_path.resolve():
        parser.error(f"--output {output} is the model file itself")
    refuse_overwrite(output, args.overwrite)
    # torch: only after the arguments
    from ..tools.export import compare_with_onnxruntime, export_onnx, nonfinite_outputs
    from ..eval.trained_network import load_backbone

    try:
        model, spec, _ = load_backbone(model_path)
        bad, total = nonfinite_outputs(model, spec["input_size"])
        if bad:  # before anything is written: an existing --output stays as it is
            raise ScriptError(f"{model_path}: the network's embeddings of random images hold NaN or inf ({bad} of "
                              f"{total} values): its weights are not usable; nothing exported")
        ensure_writable(output)
        metadata = {"model_name": spec["model_name"], "emb_dim": spec["emb_dim"],
                    "input_size": "x".join(str(v) for v in spec["input_size"]),
                    "input": "float32 (batch, 3, H, W) RGB, (pixel - 127.5) / 128",
                    "source": str(model_path)}
        export_onnx(model, spec["input_size"], output, opset=args.opset, metadata=metadata)
    except ImportError as exc:
        raise ScriptError(f"{exc.name or exc} is not installed (pip install onnx onnxruntime)") from exc
    print(f"wrote {output} ({spec['model_name']}, {spec['emb_dim']}-d, input {metadata['input_size']}, "
          f"opset {args.opset}, dynamic batch)")
    if args.no_check:
        return 0
    try:
        check = compare_with_onnxruntime(model, output, spec["input_size"], tolerance=args.tolerance)
    except ImportError as exc:
        raise ScriptError(f"{exc.name or exc} is not installed; pass --no_check to skip the comparison") from exc
    verdict = "ok" if check["passed"] else "FAILED"
    nonfinite = "".join(f", {count} of {check['values']} {side} values NaN or inf"
                        for side, count in check["nonfinite"].items() if count)
    print(f"onnxruntime vs PyTorch (batches {check['batch_sizes']}): max |diff| {check['max_abs_diff']:.3g}, "
          f"relative {check['max_rel_diff']:.3g} (tolerance {check['tolerance']:g}), "
          f"min cosine {check['min_cosine']:.9f}{nonfinite}: {verdict}")
    return 0 if check["passed"] else 1


def main(argv=None) -> int:
    return run_command(NAME, build_parser, run, argv)
