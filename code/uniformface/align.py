"""Face alignment as in the official SphereFace release (`preprocess/code/face_detect_demo.m`,
`face_align_demo.m`): MTCNN finds 5 landmarks, `cp2tform(landmarks, template, 'similarity')` fits the
similarity, and `imtransform(img, tform, 'XData', [1 96], 'YData', [1 112], 'Size', [112 96])` warps the
face (bilinear, fill 0) into a 112x96 crop (docs/DESIGN.md §6.3-§6.5: the template, the fit's direction,
the sampling).

Coordinates: landmarks and the template are in Matlab's 1-based pixel convention, (x, y) = (column, row)
with the centre of the top-left pixel at (1, 1). That is how SphereFace's `lfw_landmark.txt` was written
(Matlab MTCNN, then Matlab's cp2tform/imtransform) and how MTCNN reports them: facenet-pytorch's box and
landmark arithmetic is a number-for-number port of the Matlab MTCNN (boxes crop the 1-based rows
`y1..y2`, i.e. Python's `y1 - 1:y2`; landmarks are `w * p + x1 - 1` as in `detect_face.m`), and our
cascade (`mtcnn.py`) returns facenet's numbers. So detected landmarks, landmark files (SphereFace's and our
`landmarks.txt`) and `align_face` all use the same 1-based numbers and need no conversion; only the
sampling inside `align_face` turns them into 0-based array indices.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

# the official SphereFace detector settings and the detection size limit, explained in defaults.py
from .defaults import DETECTION_MAX_SIDE, MIN_FACE_SIZE, SCALE_FACTOR, THRESHOLDS  # noqa: F401 (re-exported)
from .mtcnn import detect_faces

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


def align_face(image: np.ndarray, landmarks: np.ndarray, output_size: Sequence[int] = (112, 96)) -> np.ndarray:
    """Warp `image` (H, W, 3) or (H, W) uint8 so that its 5 `landmarks` (x, y), Matlab 1-based, land on
    the template, as `face_align_demo.m` does: crop pixel (row r, column c), both from 0, is the image
    bilinearly sampled at crop_to_image(X = c + 1, Y = r + 1), a 1-based position. Zero outside the
    image (Matlab `imtransform` with fill 0; within one pixel of the border, bilinear against zero padding).
    Returns uint8 (rows, cols, 3)."""
    rows, cols = (int(v) for v in output_size)
    to_image = crop_to_image(landmarks, (rows, cols))

    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) or (H, W), got {pixels.shape}")
    height, width = pixels.shape[:2]

    # 1-based crop coordinates of every output pixel -> 1-based image position -> array index (minus 1)
    # -> grid_sample's normalised coordinates: with align_corners=False, -1 and +1 are the outer edges of
    # the border pixels, so index i -> (2i + 1)/n - 1.
    ys, xs = np.mgrid[1:rows + 1, 1:cols + 1].astype(np.float64)
    source = to_image[:2, :2] @ np.stack([xs.ravel(), ys.ravel()]) + to_image[:2, 2:] - 1.0
    grid = np.stack([(2 * source[0] + 1) / width - 1, (2 * source[1] + 1) / height - 1], axis=-1)
    grid_tensor = torch.from_numpy(grid.reshape(1, rows, cols, 2)).float()
    source_tensor = torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1)[None]
    warped = torch.nn.functional.grid_sample(source_tensor, grid_tensor, mode="bilinear", padding_mode="zeros",
                                             align_corners=False)
    return warped[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


# ------------------------------------------------------------------------------------------ reduced images

def to_original(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Landmarks (1-based, as everywhere here) on a reduced image (`images.read_rgb`'s scale) -> the same
    landmarks on the original image. Pixel p covers [p - 0.5, p + 0.5]: edges scale, centres do not."""
    return (np.asarray(points, dtype=np.float64) - 0.5) * np.asarray(scale) + 0.5


def to_reduced(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Landmarks (1-based) on the original image -> on the reduced image that `images.read_rgb` returned
    with `scale`."""
    return (np.asarray(points, dtype=np.float64) - 0.5) / np.asarray(scale) + 0.5


# ---------------------------------------------------------------------------------------------- detection

class FaceDetector:
    """MTCNN with facenet-pytorch's nets and weights (shipped inside the package), run by our cascade
    (`mtcnn.detect_faces`) on batches of same-size images, keeping per image the face whose box centre is
    nearest the image centre (the official face_detect_demo.m rule). `batch_size` images go through MTCNN at once: on a CPU small batches are
    fastest (its R/O-nets run over every candidate box of the batch at once), on a GPU large ones."""

    def __init__(self, device: str | torch.device = "cpu", min_face_size: int = MIN_FACE_SIZE,
                 thresholds: Sequence[float] = THRESHOLDS, factor: float = SCALE_FACTOR,
                 batch_size: int | None = None):
        from facenet_pytorch import MTCNN

        if len(thresholds) != 3:
            raise ValueError(f"thresholds needs 3 values (P-, R-, O-net), got {list(thresholds)}")
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        self.device = torch.device(device)
        self.min_face_size = int(min_face_size)
        self.batch_size = int(batch_size or (8 if self.device.type == "cpu" else 128))
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        # The nets and their shipped weights; the cascade around them is mtcnn.detect_faces.
        self.mtcnn = MTCNN(keep_all=True, select_largest=False, min_face_size=self.min_face_size,
                           thresholds=list(self.thresholds), factor=self.factor, device=self.device)
        self.mtcnn.eval()
        if self.device.type == "cpu":
            # Same arithmetic; the R-net convolutions and poolings run ~3x faster in oneDNN's NHWC kernels.
            self.mtcnn.to(memory_format=torch.channels_last)

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """Per image (uint8 (H, W, 3) RGB), the 5 landmarks (5, 2) float64 (x, y), Matlab 1-based (see the
        module docstring), of the face nearest the image centre, or None when no face is found. Images of
        different sizes are grouped by size."""
        results: list[np.ndarray | None] = [None] * len(images)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"image {index}: need uint8 (H, W, 3), got {image.dtype} {image.shape}")
            by_size.setdefault(image.shape, []).append(index)
        for shape, indices in by_size.items():
            # MTCNN's pyramid is empty (and it crashes) when the image is smaller than the minimum face.
            if min(shape[:2]) < self.min_face_size:
                continue
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                found = self._detect_same_size(np.stack([images[i] for i in chunk]))
                for index, points in zip(chunk, found):
                    results[index] = points
        return results

    def _detect_same_size(self, batch: np.ndarray) -> list[np.ndarray | None]:
        height, width = batch.shape[1:3]
        pixels = torch.from_numpy(batch).to(self.device, non_blocking=True)
        with torch.inference_mode():
            faces = detect_faces(pixels, self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet, self.min_face_size,
                                 self.thresholds, self.factor, channels_last=self.device.type == "cpu")
        # face_detect_demo.m: size(img) / 2 against the box centres, both in MTCNN's 1-based numbers.
        centre = np.array([width / 2.0, height / 2.0])
        found: list[np.ndarray | None] = []
        for boxes, points in faces:
            if not len(boxes):
                found.append(None)
                continue
            box_centres = (boxes[:, :2] + boxes[:, 2:4]) / 2.0
            nearest = int(np.argmin(((box_centres - centre) ** 2).sum(axis=1)))
            found.append(points[nearest].copy())
        return found

    def detect(self, image: np.ndarray) -> np.ndarray | None:
        """Landmarks of the most central face of one image, or None."""
        return self.detect_batch([image])[0]
