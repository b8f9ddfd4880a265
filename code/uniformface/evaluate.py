"""Evaluation of a trained network: LFW `pairs.txt` (sphereface or insightface protocol) and insightface
`.bin` sets (insightface protocol), with batched, DataLoader-fed features and the flip the protocol asks
for (SphereFace's evaluation.m, insightface's verification.py); ROC figures; the rule `verify.py` applies to a new pair; class-center spread."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .binfile import read_bin
from .checkpoint import atomic_write_text, exception_summary, load_weights
from .config import read_yaml
from .embedding import EncodedImages, ImageFiles, crop_offset, extract_features
from .models import build_model
from .pairs import Pair, missing_images, read_pairs, unique_images
from .verification import (combine_flip, cosine, insightface_threshold, kfold_accuracy, pair_scores, roc_metrics,
                           roc_points, save_roc_png, sphereface_threshold, squared_distance)

BIN_FOLDS = 10  # insightface verification.py: nrof_folds=10


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


def extract(embed: Callable[[torch.Tensor], torch.Tensor], root: str | Path, paths: Sequence[str],
            batch_size: int = 128, num_workers: int = 2, device: str = "cpu", progress: bool = True,
            input_size: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features of every image under `root` and of its horizontal mirror: (f, f_flip), float32 (N, D) each."""
    return extract_features(embed, ImageFiles(root, paths, input_size), batch_size, num_workers, device, progress)


def raw_pixel_embedder(images: torch.Tensor) -> torch.Tensor:
    """The baseline a face representation must beat: the normalised pixels themselves."""
    return images.flatten(1)


def evaluate_pairs(embed: Callable[[torch.Tensor], torch.Tensor], root: str | Path, pairs_path: str | Path,
                   protocol: str = "sphereface", allow_missing: bool = False, batch_size: int = 128,
                   num_workers: int = 2, device: str = "cpu", progress: bool = True,
                   input_size: Sequence[int] | None = None, roc_png: str | Path | None = None,
                   label: str | None = None) -> dict:
    """Verification accuracy over `pairs.txt`. A missing image is an error listing every missing file;
    with `allow_missing` such pairs count as wrong and the folds stay as `pairs.txt` defines them.
    `input_size` (the network's) lets 112x112 crops feed a 112x96 network; `roc_png` saves the ROC."""
    pairs: list[Pair] = read_pairs(pairs_path)
    missing = missing_images(pairs, root)
    if missing and not allow_missing:
        shown = ", ".join(str(m) for m in missing[:10])
        shown += f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise FileNotFoundError(f"{len(missing)} image(s) of {pairs_path} missing under {root}: {shown} "
                                "(pass --allow_missing to count their pairs as wrong)")
    missing_set = set(missing)
    present = [p for p in unique_images(pairs) if p not in missing_set]
    f, f_flip = extract(embed, root, present, batch_size, num_workers, device, progress, input_size)
    features = combine_flip(f, f_flip, protocol)
    row = {p: i for i, p in enumerate(present)}
    usable = np.array([p.left in row and p.right in row for p in pairs])
    dim = features.shape[1]
    # A pair with a missing image keeps its place (fold boundaries unchanged) with a zero feature.
    left = np.zeros((len(pairs), dim), np.float32)
    right = np.zeros((len(pairs), dim), np.float32)
    idx = np.flatnonzero(usable)
    left[idx] = features[[row[pairs[i].left] for i in idx]]
    right[idx] = features[[row[pairs[i].right] for i in idx]]
    is_same = np.array([p.is_same for p in pairs])
    n_folds = max(p.fold for p in pairs) + 1
    result = kfold_accuracy(left, right, is_same, protocol=protocol, n_folds=n_folds,
                            invalid=~usable if (~usable).any() else None).to_dict()
    result.update(_roc(left[idx], right[idx], is_same[idx], protocol, roc_png, label))
    result["verify_rule"] = decision_rule(left[idx], right[idx], is_same[idx], protocol)
    result.update(n_pairs=len(pairs), n_missing_pairs=int((~usable).sum()), missing_images=[str(m) for m in missing])
    return result


def evaluate_bin(embed: Callable[[torch.Tensor], torch.Tensor], path: str | Path,
                 input_size: Sequence[int] | None = None, batch_size: int = 128, num_workers: int = 2,
                 device: str = "cpu", progress: bool = True, roc_png: str | Path | None = None,
                 label: str | None = None) -> dict:
    """An insightface `.bin` set (pairs = images 2k, 2k+1) under the insightface protocol, 10 folds.
    Images larger than `input_size` by the template relation (112x112 -> 112x96) are cropped; the
    result's `crop` says what was done."""
    embeddings, issame, crop = bin_embeddings(embed, path, input_size, batch_size, num_workers, device, progress)
    left, right = embeddings[0::2], embeddings[1::2]
    result = kfold_accuracy(left, right, issame, protocol="insightface", n_folds=BIN_FOLDS).to_dict()
    result.update(_roc(left, right, issame, "insightface", roc_png, label))
    result.update(n_pairs=int(len(issame)), crop=crop, path=str(path))
    return result


def bin_embeddings(embed: Callable[[torch.Tensor], torch.Tensor], path: str | Path,
                   input_size: Sequence[int] | None = None, batch_size: int = 128, num_workers: int = 2,
                   device: str = "cpu", progress: bool = True) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(normalise(f + f_flip) per image, issame per pair, description of the crop or None)."""
    encoded, issame = read_bin(path, decode=False)
    crop = None
    if input_size is not None and encoded:
        from PIL import Image

        with Image.open(io.BytesIO(encoded[0])) as first:
            size = (first.height, first.width)
        offset = crop_offset(size, input_size)
        if offset is not None and offset != (0, 0):
            rows, cols = input_size
            crop = (f"{size[0]}x{size[1]} images centre-cropped to the network's {rows}x{cols} (rows "
                    f"{offset[0]}..{offset[0] + rows - 1}, columns {offset[1]}..{offset[1] + cols - 1}): the 112x112 "
                    "template is the 112x96 one shifted by +8 in x (README, 'Preprocessing details')")
    dataset = EncodedImages(encoded, input_size, source=str(path))
    f, f_flip = extract_features(embed, dataset, batch_size, num_workers, device, progress)
    return combine_flip(f, f_flip, "insightface"), issame, crop


def _roc(left: np.ndarray, right: np.ndarray, is_same: np.ndarray, protocol: str, roc_png, label) -> dict:
    """TAR at FAR 1e-3 / 1e-2, AUC and EER over all pairs (one global mean for sphereface), and the figure.
    A set of only same (or only different) pairs has no ROC: the four figures are None."""
    if is_same.all() or not is_same.any():
        return {"tar_at_far_1e-3": None, "tar_at_far_1e-2": None, "auc": None, "eer": None,
                "roc_note": "no ROC: the set holds only " + ("same" if is_same.all() else "different") + " pairs"}
    scores = pair_scores(left, right, protocol)
    metrics = roc_metrics(scores, is_same)
    if roc_png is not None:
        fpr, tpr = roc_points(scores, is_same)
        save_roc_png(fpr, tpr, roc_png, label=f"{label or 'model'} (AUC {metrics['auc']:.4f})",
                     title=f"ROC, {protocol} protocol, {len(scores)} pairs")
        metrics["roc_png"] = str(roc_png)
    return metrics


def decision_rule(left: np.ndarray, right: np.ndarray, is_same: np.ndarray, protocol: str) -> dict:
    """How `verify.py` decides a new pair as this evaluation would, fitted on ALL the pairs at once with
    the protocol's own threshold rule (the per-fold thresholds each used their own 9-fold mean, so no one
    of them applies to a new pair as such):

    sphereface: `feature_mean` = the mean of every left and right [f, f_flip] feature; score = cosine after
    subtracting it; `cosine_threshold` = the mean of the grid values (-1..1 step 1e-4) tying for the best
    accuracy (evaluation.m's getThreshold); same iff score > threshold.
    insightface: no mean; `squared_distance_threshold` t = the first best of 0..4 step 0.01 on
    |a - b|^2 of unit vectors, same iff |a - b|^2 < t, i.e. cosine > 1 - t / 2 = `cosine_threshold`."""
    left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
    if protocol == "sphereface":
        mean = np.concatenate([left, right]).mean(0)
        threshold = sphereface_threshold(cosine(left - mean, right - mean), is_same)
        return {"protocol": protocol, "feature_mean": mean.tolist(), "cosine_threshold": threshold,
                "fitted_on_pairs": int(len(left))}
    distance_threshold = insightface_threshold(squared_distance(left, right), is_same)
    return {"protocol": protocol, "feature_mean": None, "cosine_threshold": 1.0 - distance_threshold / 2.0,
            "squared_distance_threshold": distance_threshold, "fitted_on_pairs": int(len(left))}


def center_stats(payload: dict) -> dict:
    """The earlier port's second table: the mean over classes of the distance to the nearest other class
    center. Feature-space centers when the run kept them (center_mode: feature), else the head's class
    weights (center_mode: weight, the earlier port's centers). Empty when fewer than two exist. Also the
    mean angle to the nearest other center, which is what the uniform loss on the sphere acts on."""
    from .centers import mean_min_angle, mean_min_distance

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
    return {"mean_min_center_distance": float(mean_min_distance(centers)),
            "mean_min_center_angle": mean_min_angle(centers), "centers_from": source, "n_centers": int(len(centers))}


def merge_results(previous: dict | None, lfw: dict | None = None, bins: dict | None = None) -> dict:
    """One results file per model: an LFW run replaces the LFW part and keeps earlier `.bin` results;
    a `.bin` run replaces only the sets it evaluated."""
    previous = dict(previous or {})
    kept_bins = dict(previous.get("bin", {}))
    merged = dict(lfw) if lfw is not None else {k: v for k, v in previous.items() if k != "bin"}
    kept_bins.update(bins or {})
    if kept_bins:
        merged["bin"] = kept_bins
    return merged


# ------------------------------------------------------------------- a model's results file (test.py, ablate.py)


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


def roc_path(results_path: str | Path) -> Path:
    """lfw_results.json -> lfw_roc.png; r.json -> r_roc.png."""
    results_path = Path(results_path)
    return results_path.with_name(f"{results_path.stem.removesuffix('_results')}_roc.png")


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


# A results file test.py wrote holds at least one of these keys; anything else at its path is not ours to replace.
RESULT_KEYS = ("accuracy_mean", "fold_accuracies", "bin", "evaluated", "verify_rule")


def read_results(path: str | Path | None, overwrite: bool = False) -> dict | None:
    """The earlier results file to merge into, or None when there is none (or `overwrite`). A file at `path`
    that test.py did not write (not JSON, or JSON without its keys) is never replaced unless `overwrite`:
    FileExistsError naming it."""
    if path is None or not (Path(path).exists() or Path(path).is_symlink()):
        return None
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: --json takes a file name")
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
        problem = None if isinstance(previous, dict) and any(k in previous for k in RESULT_KEYS) else \
            "JSON without the keys test.py writes"
    except json.JSONDecodeError as exc:
        previous, problem = None, f"line {exc.lineno}: not valid JSON ({exc.msg})"
    except UnicodeDecodeError as exc:
        previous, problem = None, f"not UTF-8 text (byte {exc.start})"
    if problem is None:
        return previous
    if overwrite:
        return None
    raise FileExistsError(f"{path} exists and is not a results file of test.py ({problem}): pass --overwrite "
                          "to replace it, or --json another file")


def prepare_results(results_path: str | Path | None, overwrite: bool = False, roc: bool = True) -> None:
    """Before an evaluation: the results file (and its ROC figure) may be written now, and replacing them
    loses nothing that test.py did not write; else the error comes at once, not after the features."""
    from .cli import ensure_writable

    if results_path is None:
        return
    ensure_writable(results_path)
    previous = read_results(results_path, overwrite)
    figure = roc_path(results_path)
    if roc and previous is None and not overwrite and (figure.exists() or figure.is_symlink()):
        raise FileExistsError(f"{figure} exists and no results file of test.py is beside it: pass --overwrite to "
                              "replace it, or --json another file")


def evaluate_model_on_pairs(model_path: str | Path | None, dataset: str | Path, pairs_path: str | Path,
                  results_path: str | Path | None, protocol: str = "sphereface", allow_missing: bool = False,
                  baseline: str | None = None, seed: int = 0, overwrite: bool = False, **common) -> tuple[str, dict]:
    """What `test.py` does for LFW: evaluate the model (or a baseline) on `pairs_path`, save the ROC figure
    beside `results_path` and merge the results into it (earlier `.bin` results kept). `common`: batch_size,
    num_workers, device, progress. Returns (label, the LFW results). A file at `results_path` that test.py
    did not write is refused before anything is computed, unless `overwrite`."""
    embed, label, input_size, extra = load_embedder(model_path, baseline, seed, common.get("device", "cpu"))
    prepare_results(results_path, overwrite)
    lfw = evaluate_pairs(embed, dataset, pairs_path, protocol=protocol, allow_missing=allow_missing,
                         input_size=input_size, roc_png=roc_path(results_path) if results_path else None, label=label,
                         **common)
    lfw.update(extra, model_path=str(model_path) if model_path else None, dataset=str(dataset),
               pairs_path=str(pairs_path), evaluated=label)
    lfw["verify_rule"] = lfw.pop("verify_rule")  # its long feature mean last, after what people read
    if results_path is not None:
        merged = merge_results(read_results(results_path, overwrite), lfw=lfw)
        atomic_write_text(results_path, json.dumps(merged, indent=2))
    return label, lfw


def evaluate_model_on_bins(model_path: str | Path | None, bin_paths: Sequence[str | Path], results_path: str | Path | None,
                 baseline: str | None = None, seed: int = 0, overwrite: bool = False, **common) -> tuple[str, dict]:
    """What `test.py --bin` does: the insightface protocol on each `.bin` set, merged into `results_path`
    under "bin" (earlier LFW results kept). Returns (label, {set name: results})."""
    embed, label, input_size, _ = load_embedder(model_path, baseline, seed, common.get("device", "cpu"))
    prepare_results(results_path, overwrite, roc=False)
    results = {Path(path).stem: evaluate_bin(embed, path, input_size, label=label, **common) for path in bin_paths}
    if results_path is not None:
        bins = {k: dict(v, evaluated=label) for k, v in results.items()}
        merged = merge_results(read_results(results_path, overwrite), bins=bins)
        atomic_write_text(results_path, json.dumps(merged, indent=2))
    return label, results
