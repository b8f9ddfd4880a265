"""Face alignment as in the official SphereFace release (`preprocess/code/face_detect_demo.m`,
`face_align_demo.m`): MTCNN finds 5 landmarks, a least-squares similarity transform maps them onto a fixed
template, and the face is warped (bilinear) into a 112x96 crop.

Coordinates are pixel indices with the first pixel's centre at (0, 0), for landmarks, the template and the
warp alike. The official Matlab code works 1-based for both landmarks and template; shifting both by the
same pixel changes nothing in the warp, so the template numbers are used as published.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

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

# Official SphereFace detector settings (face_detect_demo.m: minsize 20, threshold [0.6 0.7 0.9],
# factor 0.85); facenet-pytorch's own defaults are [0.6, 0.7, 0.7] and 0.709.
MIN_FACE_SIZE = 20
THRESHOLDS = (0.6, 0.7, 0.9)
SCALE_FACTOR = 0.85

# Larger images are reduced (area average) before detection and warping: MTCNN's cost grows with the pixel
# count, and an aligned face is 112 px tall, so more resolution only adds aliasing in the bilinear warp.
DETECTION_MAX_SIDE = 1600


class ImageLoadError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


def template(output_size: Sequence[int] = (112, 96)) -> np.ndarray:
    """The landmark template for an output of (rows, cols) = (112, 96) or (112, 112) (x shifted by 8,
    the common insightface-style widening of the same crop)."""
    output_size = tuple(int(v) for v in output_size)
    if output_size == (112, 96):
        return TEMPLATE_112x96.copy()
    if output_size == (112, 112):
        return TEMPLATE_112x96 + np.array([8.0, 0.0])
    raise ValueError(f"output_size must be (112, 96) or (112, 112), got {output_size}")


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 matrix (float64) of the least-squares similarity (rotation, uniform scale, translation; no
    reflection) that maps the (N, 2) points `src` onto `dst`, as Matlab's `cp2tform(..., 'similarity')`
    in `face_align_demo.m` does for real faces (its reflective alternative never wins on a face)."""
    from skimage.transform import SimilarityTransform

    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two (N, 2) point sets with N >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks contain NaN or infinity")
    estimated = SimilarityTransform.from_estimate(src, dst)
    if not estimated:
        raise ValueError(f"no similarity transform for landmarks {src.tolist()}: {estimated}")
    return np.asarray(estimated.params, dtype=np.float64)


def align_face(image: np.ndarray, landmarks: np.ndarray, output_size: Sequence[int] = (112, 96)) -> np.ndarray:
    """Warp `image` (H, W, 3) or (H, W) uint8 so that its 5 `landmarks` (x, y) land on the template.
    Bilinear, zero outside the image (Matlab `imtransform` with fill 0). Returns uint8 (rows, cols, 3)."""
    rows, cols = (int(v) for v in output_size)
    to_template = similarity_transform(landmarks, template((rows, cols)))
    to_source = np.linalg.inv(to_template)

    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) or (H, W), got {pixels.shape}")
    height, width = pixels.shape[:2]

    # Source position of every output pixel, then grid_sample's normalised coordinates: with
    # align_corners=False, -1 and +1 are the outer edges of the border pixels, so index i -> (2i + 1)/n - 1.
    ys, xs = np.mgrid[0:rows, 0:cols].astype(np.float64)
    source = to_source[:2, :2] @ np.stack([xs.ravel(), ys.ravel()]) + to_source[:2, 2:]
    grid = np.stack([(2 * source[0] + 1) / width - 1, (2 * source[1] + 1) / height - 1], axis=-1)
    grid_tensor = torch.from_numpy(grid.reshape(1, rows, cols, 2)).float()
    source_tensor = torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1)[None]
    warped = torch.nn.functional.grid_sample(source_tensor, grid_tensor, mode="bilinear", padding_mode="zeros",
                                             align_corners=False)
    return warped[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


# ----------------------------------------------------------------------------------------------- loading

def _to_rgb_array(img) -> np.ndarray:
    """Any PIL mode -> uint8 RGB (H, W, 3). 16-bit and 32-bit greys are scaled, not clipped (PIL's own
    convert('L') would clip everything above 255 to white)."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            full_scale = 65535.0
        else:  # 32-bit int or float: scale by the range the values actually use
            peak = float(values.max()) if values.size else 0.0
            full_scale = 255.0 if peak <= 255 else (65535.0 if peak <= 65535 else peak)
        grey = np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    # RGBA/LA/PA: alpha is dropped, as Matlab's imread (the official pipeline) does; CMYK, P, 1, L,
    # YCbCr, LAB and HSV go through PIL's conversions.
    if mode not in ("RGB",):
        if mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def read_rgb(path: str | Path, max_side: int | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Decode `path` to uint8 RGB (H, W, 3), upright per its EXIF orientation. When `max_side` is given and
    the image is larger, it is reduced (JPEG DCT scaling, then an area-averaging box filter) so that its
    longer side is `max_side`. Returns (pixels, (sx, sy)), the original size over the returned size:
    a point at index p of the result is at (p + 0.5) * s - 0.5 in the original.
    Raises ImageLoadError naming the file for empty, truncated or non-image files."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if max_side and max(width, height) > max_side and img.format == "JPEG":
                    # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT: an 8000x8000 JPEG stays cheap.
                    ratio = max_side / max(width, height)
                    img.draft(None, (math.ceil(width * ratio), math.ceil(height * ratio)))
                img.load()
                try:
                    upright = ImageOps.exif_transpose(img)
                except Exception:  # a damaged EXIF block does not make the pixels unusable
                    upright = img
                if upright.size != img.size:  # turned a quarter
                    width, height = height, width
                pixels = _to_rgb_array(upright)
        if max_side and max(pixels.shape[:2]) > max_side:
            ratio = max_side / max(pixels.shape[:2])
            target = (max(1, round(pixels.shape[1] * ratio)), max(1, round(pixels.shape[0] * ratio)))
            pixels = np.asarray(Image.fromarray(pixels).resize(target, Image.Resampling.BOX))
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBomb...)
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, Image.UnidentifiedImageError):
            reason = "not an image file (or an unsupported format)"
        raise ImageLoadError(f"cannot decode image {path}: {reason}") from exc
    if pixels.ndim != 3 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageLoadError(f"cannot decode image {path}: empty image")
    return pixels, (width / pixels.shape[1], height / pixels.shape[0])


def load_rgb(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """Decode `path` to uint8 RGB (H, W, 3); see `read_rgb` for the handling of modes and large images."""
    return read_rgb(path, max_side)[0]


def to_original(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Landmarks on a reduced image (read_rgb's scale) -> the same landmarks on the original image."""
    return (np.asarray(points, dtype=np.float64) + 0.5) * np.asarray(scale) - 0.5


def to_reduced(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Landmarks on the original image -> on the reduced image that read_rgb returned with `scale`."""
    return (np.asarray(points, dtype=np.float64) + 0.5) / np.asarray(scale) - 0.5


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
        """Per image (uint8 (H, W, 3) RGB), the 5 landmarks (5, 2) float64 (x, y) of the face nearest the
        image centre, or None when no face is found. Images of different sizes are grouped by size."""
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
        from .mtcnn import detect_faces

        height, width = batch.shape[1:3]
        pixels = torch.from_numpy(batch).to(self.device, non_blocking=True)
        with torch.inference_mode():
            faces = detect_faces(pixels, self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet, self.min_face_size,
                                 self.thresholds, self.factor, channels_last=self.device.type == "cpu")
        centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
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
