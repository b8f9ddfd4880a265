"""The geometry of the official SphereFace crop, without torch: the 5-point template, Matlab's
`cp2tform(landmarks, template, 'similarity')` as `face_align_demo.m` calls it, the crop -> image map that
`imtransform` samples with, and the landmark scaling for reduced images (docs/DESIGN.md §6.2-§6.5).

Coordinates: landmarks and the template are in Matlab's 1-based pixel convention, (x, y) = (column, row)
with the centre of the top-left pixel at (1, 1) (see `align/face.py` for why detected landmarks already are).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


# The official 5-point template for a 112x96 (rows x cols) crop, in (x, y) order: left eye, right eye,
# nose tip, left mouth corner, right mouth corner (`face_align_demo.m`, coord5point).
TEMPLATE_112x96 = np.array([
    [30.2946, 51.6963],
    [65.5318, 51.5014],
    [48.0252, 71.7366],
    [33.5493, 92.3655],
    [62.7299, 92.2041],
], dtype=np.float64)
TEMPLATE_112x96.setflags(write=False)


def template(output_size: Sequence[int] = (112, 96)) -> np.ndarray:
    """The landmark template (Matlab 1-based crop coordinates) for an output of (rows, cols) = (112, 96) or
    (112, 112) (x shifted by 8, the common insightface-style widening of the same crop)."""
    output_size = tuple(int(v) for v in output_size)
    if output_size == (112, 96):
        return TEMPLATE_112x96.copy()
    if output_size == (112, 112):
        return TEMPLATE_112x96 + np.array([8.0, 0.0])
    raise ValueError(f"output_size must be (112, 96) or (112, 112), got {output_size}")


def nonreflective_similarity(base: np.ndarray, points: np.ndarray) -> np.ndarray:
    """cp2tform's findNonreflectiveSimilarity: the least-squares similarity u = a x + b y + c,
    v = -b x + a y + d from `base` (x, y) to `points` (u, v), i.e. with the residual measured among
    `points` (N >= 2 pairs; with 2 the fit is exact). Returned as the 3x3 matrix M (float64) with
    (u, v, 1) = M (x, y, 1)."""
    base, points = np.asarray(base, dtype=np.float64), np.asarray(points, dtype=np.float64)
    n = len(base)
    system = np.zeros((2 * n, 4))
    system[:n, 0], system[:n, 1], system[:n, 2] = base[:, 0], base[:, 1], 1.0
    system[n:, 0], system[n:, 1], system[n:, 3] = base[:, 1], -base[:, 0], 1.0
    if np.linalg.matrix_rank(system) < 4:
        raise ValueError("cp2tform needs at least 2 distinct template points")
    a, b, c, d = np.linalg.lstsq(system, np.concatenate([points[:, 0], points[:, 1]]), rcond=None)[0]
    return np.array([[a, b, c], [-b, a, d], [0.0, 0.0, 1.0]])


def cp2tform_similarity(input_points: np.ndarray, base_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matlab's `cp2tform(input_points, base_points, 'similarity')` (findSimilarity), float64:
    (forward, inverse), 3x3 matrices acting on column vectors (x, y, 1); forward maps input -> base
    (tformfwd), inverse base -> input (tforminv, what imtransform samples with).

    As Matlab: the least-squares fit runs from the base points to the input points (residual in the
    input's coordinates), once as it is and once with the base points' x negated (the reflective
    alternative, un-reflected afterwards); the one whose forward map leaves the smaller residual at the
    base points wins, the plain one on a tie. Matlab's `norm` of the (N, 2) residual matrix is its
    largest singular value, used here too. (cp2tform also recentres points lying more than 1000 spans
    from the origin; pixel coordinates never do.)"""
    points = np.asarray(input_points, dtype=np.float64)
    base = np.asarray(base_points, dtype=np.float64)
    if points.shape != base.shape or points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
        raise ValueError(f"need two (N, 2) point sets with N >= 3, got {points.shape} and {base.shape}")
    if not (np.isfinite(points).all() and np.isfinite(base).all()):
        raise ValueError("landmarks contain NaN or infinity")
    flip = np.diag([-1.0, 1.0, 1.0])
    candidates = []
    for reflect in (False, True):
        inverse = nonreflective_similarity(base @ flip[:2, :2] if reflect else base, points)
        if reflect:
            inverse = inverse @ flip  # un-reflect: the fit took (-x, y)
        scale = math.sqrt(abs(np.linalg.det(inverse[:2, :2])))
        if not scale > 1e-9:
            raise ValueError(f"the landmarks {points.tolist()} coincide: no similarity onto the template")
        forward = np.linalg.inv(inverse)
        forward[2] = (0.0, 0.0, 1.0)
        residual = points @ forward[:2, :2].T + forward[:2, 2] - base
        candidates.append((np.linalg.norm(residual, 2), forward, inverse))
    (norm_plain, *plain), (norm_reflected, *reflected) = candidates
    return tuple(plain if norm_plain <= norm_reflected else reflected)


def crop_to_image(landmarks: np.ndarray, output_size: Sequence[int] = (112, 96)) -> np.ndarray:
    """The 3x3 matrix (float64) that takes a crop position in Matlab coordinates (X, Y) = (column + 1,
    row + 1) to the image position (1-based (x, y)) that `imtransform` samples there, for 1-based
    `landmarks`: tforminv of `cp2tform(landmarks, template(output_size), 'similarity')`."""
    return cp2tform_similarity(landmarks, template(output_size))[1]


def to_original(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Landmarks (1-based, as everywhere here) on a reduced image (`images.read_rgb`'s scale) -> the same
    landmarks on the original image. Pixel p covers [p - 0.5, p + 0.5]: edges scale, centres do not."""
    return (np.asarray(points, dtype=np.float64) - 0.5) * np.asarray(scale) + 0.5


def to_reduced(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Landmarks (1-based) on the original image -> on the reduced image that `images.read_rgb` returned
    with `scale`."""
    return (np.asarray(points, dtype=np.float64) - 0.5) / np.asarray(scale) + 0.5
