"""Are two photos the same person? Align both with the project's aligner (MTCNN + the SphereFace
template, `align/face.py`), embed them with the flip their evaluation protocol uses, and decide with the rule
`test.py` fitted on the model's last LFW run (`verify_rule` in lfw_results.json, see
`evaluate.decision_rule`) or with a threshold given by the user.

The printed score is a cosine: for the sphereface protocol that of [f, f_flip] after subtracting the LFW
feature mean stored by test.py (evaluation.m's thresholds apply to mean-subtracted features only); for
insightface that of normalise(f + f_flip). Without a results file there is no mean and the cosine is
that of the plain [f, f_flip].
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..align.face import DETECTION_MAX_SIDE, FaceDetector, align_face
from .embedding import flip_embed
from ..base.images import read_rgb
from ..base.paths import shown
from ..nn.models import normalize_pixels
from .protocols import PROTOCOLS, check_protocol


class FaceNotFoundError(ValueError):
    """No face was detected in a photo; the message names the file(s)."""


@dataclass(frozen=True)
class Rule:
    protocol: str                    # how features are formed: sphereface [f, f_flip] or insightface
    feature_mean: np.ndarray | None  # subtracted before the cosine (sphereface)
    threshold: float | None          # same person iff cosine > threshold
    source: str                      # where the rule comes from, for the report


def load_rule(results_path: str | Path) -> Rule:
    """The rule stored by test.py. Older results files without `verify_rule`: an insightface run's fold
    thresholds apply as they are (mean of the folds', as a cosine); a sphereface run's need the feature mean
    that only `verify_rule` keeps, so that is an error asking to rerun test.py."""
    path = Path(results_path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}): not a results file of test.py") from None
    if not isinstance(results, dict):
        raise ValueError(f"{path}: a JSON {type(results).__name__}, not a results file of test.py "
                         "(rerun test.py --model_path on the model, or pass --threshold)")
    rule = results.get("verify_rule")
    if isinstance(rule, dict):
        for key in ("protocol", "cosine_threshold"):
            if key not in rule:
                raise ValueError(f"{path}: verify_rule lacks {key!r}")
        if rule["protocol"] not in PROTOCOLS:
            _refuse(path, f"verify_rule's protocol {shown(rule['protocol'], 40)} is not one of "
                          f"{', '.join(PROTOCOLS)}")
        mean = None if rule.get("feature_mean") is None else _finite(rule["feature_mean"], path, "verify_rule")
        if mean is not None:
            with np.errstate(over="ignore"):
                squared_norm = float(np.sum(mean * mean))
            if not np.isfinite(squared_norm):  # the cosine's norms after subtracting it would be inf, the cosine NaN
                _refuse(path, f"verify_rule's feature_mean is too large for a cosine (its squared norm is "
                              f"{squared_norm}), not an LFW feature mean")
        threshold = float(_finite(rule["cosine_threshold"], path, "verify_rule", scalar=True))
        if not -1 <= threshold <= 1:  # beyond, every pair gets the same answer
            _refuse(path, f"verify_rule's cosine_threshold {threshold:g} is not a cosine (in [-1, 1])")
        return Rule(rule["protocol"], mean, threshold,
                    f"{path} (threshold fitted on its {rule.get('fitted_on_pairs', '?')} pairs)")
    if results.get("protocol") == "insightface" and results.get("thresholds"):
        with np.errstate(over="ignore"):
            distance = float(np.mean(_finite(results["thresholds"], path, "thresholds")))
        if not 0 <= distance <= 4:  # squared distances of unit vectors; 1e308s average to inf
            _refuse(path, f"the mean of its fold thresholds, {distance:g}, is not a squared distance of unit "
                          "vectors (in [0, 4])")
        return Rule("insightface", None, 1.0 - distance / 2.0, f"{path} (mean of its fold thresholds)")
    raise ValueError(f"{path} has no 'verify_rule' (written by test.py from this version on): rerun "
                     "test.py --model_path on the model, or pass --threshold")


def _finite(value, path: Path, key: str, scalar: bool = False) -> np.ndarray:
    """`value` as float64 numbers (one number when `scalar`), or a ValueError naming the file: a NaN
    threshold (JSON allows it) would answer "different people" for every pair, whatever the photos."""
    try:
        numbers = np.asarray(value, np.float64)
    except (TypeError, ValueError) as exc:
        numbers, problem = None, f"a value that is not a number ({exc})"
    else:
        problem = ("a list where one number belongs" if scalar and numbers.ndim else
                   None if np.isfinite(numbers).all() else "a value that is not a finite number")
    if problem is not None:
        _refuse(path, f"{key} holds {problem}")
    return numbers


def _refuse(path: Path, problem: str):
    raise ValueError(f"{path}: {problem}: rerun test.py --model_path on the model, or pass --threshold")


def align_photos(paths: Sequence[str | Path], output_size: Sequence[int], detector: FaceDetector
                 ) -> list[np.ndarray]:
    """Each photo's most central face, aligned to `output_size` (uint8 (rows, cols, 3)). Raises
    FaceNotFoundError naming every photo without a face; unreadable files raise images.ImageLoadError."""
    decoded = [read_rgb(p, DETECTION_MAX_SIDE)[0] for p in paths]
    landmarks = detector.detect_batch(decoded)
    faceless = [str(p) for p, points in zip(paths, landmarks) if points is None]
    if faceless:
        raise FaceNotFoundError("no face found in " + ", ".join(faceless))
    return [align_face(pixels, points, tuple(output_size)) for pixels, points in zip(decoded, landmarks)]


def face_features(embed: Callable[[torch.Tensor], torch.Tensor], faces: Sequence[np.ndarray], protocol: str,
                  device: str = "cpu") -> np.ndarray:
    """One feature per aligned face, formed with the flip as `protocol` asks (float64)."""
    check_protocol(protocol)
    images = normalize_pixels(torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).to(device))
    return flip_embed(embed, images, protocol)


def pair_cosine(feature_a: np.ndarray, feature_b: np.ndarray, feature_mean: np.ndarray | None) -> float:
    """The cosine of the two features after `feature_mean` is subtracted, for any finite numbers: each
    vector is divided by its largest |component| first, so that no dot product overflows (finite features
    of 1e200 gave inf / inf = NaN, which decided "different people"). A ValueError instead of a NaN: for
    features that are not finite, or zero."""
    a, b = np.asarray(feature_a, np.float64), np.asarray(feature_b, np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a face's feature holds NaN or inf (the network's weights are not finite numbers?): "
                         "no cosine to compare")
    if feature_mean is not None:
        if feature_mean.shape != a.shape:
            raise ValueError(f"the stored feature mean has {feature_mean.size} values but the model's features "
                             f"have {a.size}: the results file belongs to another model")
        with np.errstate(over="ignore"):
            a, b = a - feature_mean, b - feature_mean
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ValueError("subtracting the stored feature mean overflows: it is not an LFW feature mean")
    scale_a, scale_b = np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0)
    if not (scale_a > 0 and scale_b > 0):  # a zero feature has no direction: no cosine
        raise ValueError("a face's feature is zero (after the stored feature mean is subtracted): no cosine "
                         "to compare")
    a, b = a / scale_a, b / scale_b
    return float(np.clip(a @ b / np.sqrt((a @ a) * (b @ b)), -1.0, 1.0))
