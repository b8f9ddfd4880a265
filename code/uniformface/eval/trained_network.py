"""A trained network read back from what train.py wrote: the weights file (`{model_name}_{emb_dim}.pt`, read
with weights_only=True), the network rebuilt from the spec stored in it, the run's `config.yaml` beside it,
the baselines test.py scores instead of a network, and the class-center spread kept with the weights.
Used by test.py, verify.py, embed.py and export.py."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..nn.centers import nearest_center_figures
from ..train.checkpoint import exception_summary, load_weights
from ..base.config import read_yaml
from ..nn.models import build_model


def read_weights(model_path: str | Path) -> dict:
    """The weights file train.py wrote (`{model_name}_{emb_dim}.pt`), read with weights_only=True: nothing
    in it can run code. A file that cannot be read as one (another format such as a JPEG renamed .pt, a
    damaged copy, a pickle that asks for a Python function) is a one-line ValueError naming it and never
    advising weights_only=False; a folder, a missing or unreadable file is an OSError naming it."""
    path = Path(model_path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.pt") if p.name != "checkpoint.pt")
        hint = f" (here: {', '.join(found[:3])})" if found else ""
        raise ValueError(f"--model_path {path} is a folder: give the weights file train.py wrote in it, "
                         f"{{model_name}}_{{emb_dim}}.pt{hint}")
    if path.is_file():
        with open(path, "rb"):  # a permission problem is reported as such, not as a damaged file
            pass
    payload = load_weights(path)  # names the file: missing, or anything but train.py's tensors and plain values
    spec = payload.get("spec")
    problems = []
    if not isinstance(spec, dict):
        problems.append(f"'spec' is a {type(spec).__name__}, not a mapping")
    else:
        if not isinstance(spec.get("model_name"), str):
            problems.append("spec.model_name is missing or not a name")
        if not isinstance(spec.get("emb_dim"), int) or isinstance(spec.get("emb_dim"), bool) or spec["emb_dim"] < 1:
            problems.append("spec.emb_dim is missing or not a positive integer")
        size = spec.get("input_size")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            problems.append("spec.input_size is missing or not [rows, cols]")
    if not isinstance(payload.get("model"), dict):
        problems.append("'model' is not a mapping of tensors")
    if problems:
        raise ValueError(f"{path}: not a weights file written by train.py: {'; '.join(problems)}")
    return payload


def load_backbone(model_path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict, dict]:
    """Rebuild the network from the spec stored in the weights file (not from its name). Weights that do not
    fit that spec (an edited file, a spec from another run) are a ValueError naming the file and the first
    mismatch."""
    payload = read_weights(model_path)
    spec = payload["spec"]
    rows, cols = spec["input_size"]
    described = f"{spec['model_name']}, emb_dim {spec['emb_dim']}, input {rows}x{cols}"
    try:
        model = build_model(spec["model_name"], spec["emb_dim"], tuple(spec["input_size"]))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{model_path}: its spec ({described}) names no network this version builds: "
                         f"{exception_summary(exc)}") from None
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc)]
        raise ValueError(f"{model_path}: the weights do not fit the spec stored with them ({described}): "
                         f"{lines[0][:200]}{' ...' if len(lines) > 1 else ''} (the file was changed after "
                         "train.py wrote it: use the file of the run folder)") from None
    return model.to(device).eval(), spec, payload


def raw_pixel_embedder(images: torch.Tensor) -> torch.Tensor:
    """The baseline a face representation must beat: the normalised pixels themselves."""
    return images.flatten(1)


def center_stats(payload: dict) -> dict:
    """The earlier port's second table: the mean over classes of the distance to the nearest other class
    center. Feature-space centers when the run kept them (center_mode: feature), else the head's class
    weights (center_mode: weight, the earlier port's centers). Empty when fewer than two exist. Also the
    mean angle to the nearest other center, which is what the uniform loss on the sphere acts on."""
    if "centers" in payload:
        centers, source = payload["centers"], "feature centers"
        if "centers_initialized" in payload:
            centers = centers[payload["centers_initialized"].bool()]
    elif isinstance(payload.get("head"), dict) and "weight" in payload["head"]:
        centers, source = payload["head"]["weight"], "head weights"
    else:
        return {}
    if centers.dim() != 2 or len(centers) < 2:
        return {}
    distance, angle = nearest_center_figures(centers)   # one sweep over the center pairs for both figures
    return {"mean_min_center_distance": float(distance), "mean_min_center_angle": float(angle),
            "centers_from": source, "n_centers": int(len(centers))}


def load_embedder(model_path: str | Path | None, baseline: str | None = None, seed: int = 0, device: str = "cpu"):
    """(network or baseline, its label, its input size or None, extra results such as the center spread).
    `baseline`: "raw" scores the pixels themselves, "untrained" the same network at its initialisation."""
    if baseline == "raw":
        return raw_pixel_embedder, "raw pixels", None, {}
    if baseline == "untrained":
        spec = read_weights(model_path)["spec"]
        torch.manual_seed(seed)
        model = build_model(spec["model_name"], spec["emb_dim"], tuple(spec["input_size"])).to(device).eval()
        return model, f"{spec['model_name']} untrained", tuple(spec["input_size"]), {}
    model, spec, payload = load_backbone(model_path, device)
    return model, f"{spec['model_name']}_{spec['emb_dim']}", tuple(spec["input_size"]), center_stats(payload)


def run_config(model_path: str | Path) -> dict:
    """The resolved config that train.py keeps beside the weights, as a plain dict ({} when absent).
    A file there that is not a YAML mapping is a ValueError naming it (and its line)."""
    saved = Path(model_path).parent / "config.yaml"
    if not saved.is_file():
        return {}
    fix = "fix it, or pass --dataset and --pairs_path"
    try:
        cfg = read_yaml(saved)
    except ValueError as exc:
        raise ValueError(f"{exc}; {fix}") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{saved}: expected a mapping of config keys, found a {type(cfg).__name__}; {fix}")
    return cfg


def configured_dataset(model_path: str | Path, key: str) -> str | None:
    """`dataset.<key>` (test, pairs) of the run's config.yaml, or None when unset."""
    dataset = run_config(model_path).get("dataset")
    value = dataset.get(key) if isinstance(dataset, dict) else None
    if (dataset is not None and not isinstance(dataset, dict)) or (value is not None and not isinstance(value, str)):
        saved = Path(model_path).parent / "config.yaml"
        raise ValueError(f"{saved}: key dataset.{key} is not a path; fix it, or pass "
                         f"{'--dataset' if key == 'test' else '--pairs_path'}")
    return value
