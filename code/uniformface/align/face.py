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

from typing import Sequence

import numpy as np
import torch

from .crop import crop_to_image
# the official SphereFace detector settings and the detection size limit, explained in defaults.py
from ..base.defaults import DETECTION_MAX_SIDE, MIN_FACE_SIZE, SCALE_FACTOR, THRESHOLDS  # noqa: F401 (re-exported)
from .mtcnn import detect_faces


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
