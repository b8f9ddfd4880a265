"""The embedding network as ONNX (dynamic batch), and the check that onnxruntime reproduces PyTorch.

torch 2.14's default exporter (`dynamo=True`) needs the onnxscript package; the TorchScript-based one
(`dynamo=False`) needs nothing beyond torch and handles this network fully (Conv, PReLU, Add, Flatten,
Gemm), so it is the one used. Its highest opset is 20; the default here is 17, which every maintained
runtime reads (onnxruntime >= 1.12, TensorRT >= 8.5, OpenVINO) and which holds every op above.

The graph takes what the PyTorch backbone takes: float32 (B, 3, 112, 96) RGB pixels already normalised
as (x - 127.5) / 128 (models.normalize_pixels); the model's metadata says so, with the spec it came from.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from ..base.atomic import atomic_write_bytes
from ..base.defaults import DEFAULT_OPSET, DEFAULT_TOLERANCE  # the opset and tolerance, explained there
from ..nn.models import normalize_pixels

INPUT_NAME, OUTPUT_NAME = "images", "embeddings"


def export_onnx(model: nn.Module, input_size: Sequence[int], output: str | Path, opset: int = DEFAULT_OPSET,
                metadata: dict | None = None) -> Path:
    """Write `model` (eval mode, CPU copy) as ONNX with a dynamic batch axis; `metadata` goes into the
    model's metadata_props as strings."""
    import onnx

    model = _cpu_eval_copy(model)
    example = _random_images(2, input_size, torch.Generator().manual_seed(0))  # its values do not matter
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter announces it is legacy; the tracer warns that the input-shape check in
        # FaceNet.forward becomes a constant, which is right: the graph's shape is fixed but for the batch.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(graph)
    for key, value in (metadata or {}).items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    output = Path(output)
    atomic_write_bytes(output, graph.SerializeToString())
    return output


def nonfinite_outputs(model: nn.Module, input_size: Sequence[int], batch: int = 2, seed: int = 0) -> tuple[int, int]:
    """(NaN or inf values, values) of the PyTorch network's embeddings of `batch` random images (float32,
    CPU): weights holding one NaN make embeddings NaN, and such a network is not worth exporting."""
    model = _cpu_eval_copy(model)
    with torch.no_grad():
        out = model(_random_images(batch, input_size, torch.Generator().manual_seed(seed)))
    return int((~torch.isfinite(out)).sum()), out.numel()


def compare_with_onnxruntime(model: nn.Module, onnx_path: str | Path, input_size: Sequence[int],
                             batch_sizes: Sequence[int] = (1, 3), seed: int = 0,
                             tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Run the same random uint8 images (normalised as in training) through PyTorch (float32, CPU) and
    onnxruntime (CPU), at several batch sizes to exercise the dynamic axis. Returns max_abs_diff,
    max_rel_diff (over the largest |embedding|), min_cosine (these three over the values finite on both
    sides), nonfinite ({"pytorch": n, "onnxruntime": n}: NaN or inf values on each side), values (how
    many on each side), tolerance, batch_sizes, and passed: no NaN or inf on either side, and the relative
    difference within the tolerance (a NaN compares false with everything: Python's max(0.0, nan) is 0.0,
    and all-NaN outputs once passed with "max |diff| 0")."""
    import onnxruntime

    model = _cpu_eval_copy(model)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    abs_diff = rel_diff = 0.0
    min_cosine = 1.0
    nonfinite = {"pytorch": 0, "onnxruntime": 0}
    values = 0
    for batch in batch_sizes:
        x = _random_images(batch, input_size, generator)
        with torch.no_grad():
            expected = model(x).numpy().astype(np.float64)
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0].astype(np.float64)
        if got.shape != expected.shape:
            raise ValueError(f"onnxruntime returned {got.shape} for batch {batch}, PyTorch {expected.shape}")
        finite = np.isfinite(expected) & np.isfinite(got)
        nonfinite["pytorch"] += int((~np.isfinite(expected)).sum())
        nonfinite["onnxruntime"] += int((~np.isfinite(got)).sum())
        values += expected.size
        if not finite.any():
            continue
        difference = float(np.abs(got - expected)[finite].max())
        abs_diff = max(abs_diff, difference)
        rel_diff = max(rel_diff, difference / max(float(np.abs(expected[finite]).max()), 1e-12))
        rows = finite.all(1)
        if rows.any():
            a, b = got[rows], expected[rows]
            cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            min_cosine = min(min_cosine, float(cosine.min()))
    passed = not any(nonfinite.values()) and rel_diff <= tolerance
    return {"max_abs_diff": abs_diff, "max_rel_diff": rel_diff, "min_cosine": min_cosine, "nonfinite": nonfinite,
            "values": values, "tolerance": tolerance, "batch_sizes": list(batch_sizes), "passed": passed}


def _random_images(batch: int, input_size: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Random uint8 RGB images normalised as in training (models.normalize_pixels), (batch, 3, rows, cols)."""
    rows, cols = (int(v) for v in input_size)
    return normalize_pixels(torch.randint(0, 256, (batch, 3, rows, cols), dtype=torch.uint8, generator=generator))


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).float().cpu().eval()
