"""Evaluation of a network on face pairs: LFW `pairs.txt` (sphereface or insightface protocol) and
insightface `.bin` sets (insightface protocol), with batched, DataLoader-fed features and the flip the
protocol asks for (SphereFace's evaluation.m, insightface's verification.py); ROC figures; the rule
`verify.py` applies to a new pair; and what test.py does with a trained network and its results file."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .binfile import read_bin
from .embedding import EncodedImages, ImageFiles, crop_offset, extract_features
from ..base.images import image_header_size
from .pairs import Pair, missing_images, read_pairs, unique_images
from ..base.paths import first_and_more
from .results import prepare_results, roc_path, update_results
from .trained_network import load_embedder
from .protocols import (check_protocol, cosine, insightface_threshold, kfold_accuracy,
                        roc_summary, sphereface_threshold, squared_distance)

BIN_FOLDS = 10  # insightface verification.py: nrof_folds=10


def evaluate_pairs(embed: Callable[[torch.Tensor], torch.Tensor], root: str | Path, pairs_path: str | Path,
                   protocol: str = "sphereface", allow_missing: bool = False, batch_size: int = 128,
                   num_workers: int = 2, device: str = "cpu", progress: bool = True,
                   input_size: Sequence[int] | None = None, roc_png: str | Path | None = None,
                   label: str | None = None) -> dict:
    """Verification accuracy over `pairs.txt`. A missing image is an error listing every missing file;
    with `allow_missing` such pairs count as wrong and the folds stay as `pairs.txt` defines them.
    `input_size` (the network's) lets 112x112 crops feed a 112x96 network; `roc_png` saves the ROC."""
    check_protocol(protocol)
    pairs: list[Pair] = read_pairs(pairs_path)
    missing = missing_images(pairs, root)
    if missing and not allow_missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of {pairs_path} missing under {root}: "
                                f"{first_and_more(missing)} "
                                "(pass --allow_missing to count their pairs as wrong)")
    missing_set = set(missing)
    present = [p for p in unique_images(pairs) if p not in missing_set]
    features = extract_features(embed, ImageFiles(root, present, input_size), protocol, batch_size, num_workers,
                                device, progress)
    left, right, usable = pair_features(features, present, pairs, np.float32)
    idx = np.flatnonzero(usable)
    is_same = np.array([p.is_same for p in pairs])
    n_folds = max(p.fold for p in pairs) + 1
    result = kfold_accuracy(left, right, is_same, protocol=protocol, n_folds=n_folds,
                            invalid=~usable if (~usable).any() else None).to_dict()
    result.update(roc_summary(left[idx], right[idx], is_same[idx], protocol, roc_png, label))
    result["verify_rule"] = decision_rule(left[idx], right[idx], is_same[idx], protocol)
    result.update(n_pairs=len(pairs), n_missing_pairs=int((~usable).sum()), missing_images=[str(m) for m in missing])
    return result


def pair_features(features: np.ndarray, items: Sequence, pairs: Sequence, dtype=np.float64
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left, right, usable): each pair's two rows of `features`, whose row i is that of `items[i]` (the
    pairs' `left` / `right` name items). A pair with an item that has no row (a missing image or video)
    keeps its place, so that fold boundaries stay as the pairs file defines them, with zero features and
    usable False."""
    row = {item: i for i, item in enumerate(items)}
    usable = np.array([p.left in row and p.right in row for p in pairs])
    left = np.zeros((len(pairs), features.shape[1]), dtype)
    right = np.zeros((len(pairs), features.shape[1]), dtype)
    idx = np.flatnonzero(usable)
    left[idx] = features[[row[pairs[i].left] for i in idx]]
    right[idx] = features[[row[pairs[i].right] for i in idx]]
    return left, right, usable


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
    result.update(roc_summary(left, right, issame, "insightface", roc_png, label))
    result.update(n_pairs=int(len(issame)), crop=crop, path=str(path))
    return result


def bin_embeddings(embed: Callable[[torch.Tensor], torch.Tensor], path: str | Path,
                   input_size: Sequence[int] | None = None, batch_size: int = 128, num_workers: int = 2,
                   device: str = "cpu", progress: bool = True) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(normalise(f + f_flip) per image, issame per pair, description of the crop or None)."""
    encoded, issame = read_bin(path, decode=False)
    crop = None
    if input_size is not None and encoded:
        size = image_header_size(encoded[0], name=f"{path}: image 0")
        offset = crop_offset(size, input_size)
        if offset is not None and offset != (0, 0):
            rows, cols = input_size
            crop = (f"{size[0]}x{size[1]} images centre-cropped to the network's {rows}x{cols} (rows "
                    f"{offset[0]}..{offset[0] + rows - 1}, columns {offset[1]}..{offset[1] + cols - 1}): the 112x112 "
                    "template is the 112x96 one shifted by +8 in x (docs/DESIGN.md §6.3)")
    dataset = EncodedImages(encoded, input_size, source=str(path))
    return extract_features(embed, dataset, "insightface", batch_size, num_workers, device, progress), issame, crop


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


def evaluate_model_on_pairs(model_path: str | Path | None, dataset: str | Path, pairs_path: str | Path,
                            results_path: str | Path | None, protocol: str = "sphereface", allow_missing: bool = False,
                            baseline: str | None = None, seed: int = 0, overwrite: bool = False,
                            **common) -> tuple[str, dict]:
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
        update_results(results_path, overwrite, lfw=lfw)
    return label, lfw


def evaluate_model_on_bins(model_path: str | Path | None, bin_paths: Sequence[str | Path],
                           results_path: str | Path | None, baseline: str | None = None, seed: int = 0,
                           overwrite: bool = False, **common) -> tuple[str, dict]:
    """What `test.py --bin` does: the insightface protocol on each `.bin` set, merged into `results_path`
    under "bin" (earlier LFW results kept). Returns (label, {set name: results})."""
    embed, label, input_size, _ = load_embedder(model_path, baseline, seed, common.get("device", "cpu"))
    prepare_results(results_path, overwrite, roc=False)
    results = {Path(path).stem: evaluate_bin(embed, path, input_size, label=label, **common) for path in bin_paths}
    if results_path is not None:
        bins = {k: dict(v, evaluated=label) for k, v in results.items()}
        update_results(results_path, overwrite, bins=bins)
    return label, results
