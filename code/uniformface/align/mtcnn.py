"""The MTCNN cascade (Zhang et al., "Joint Face Detection and Alignment Using Multitask Cascaded
Convolutional Networks", 2016) with facenet-pytorch's P-, R- and O-nets and their shipped weights, step for
step as facenet-pytorch 2.5.3 runs it (`models/utils/detect_face.py`), so that it finds the same faces and
landmarks. One step differs in how, not in what: facenet resamples the R- and O-net input of each candidate
box with its own `interpolate(..., mode="area")` call, a Python loop of thousands of small operations
(the slowest part on a GPU), and resamples the whole batch once per pyramid level; here the pyramid and
all boxes are gathered from one integral image per batch (`AreaSampler`).

Coordinates follow facenet, which keeps the Matlab MTCNN's numbers (`detect_face.m`, as SphereFace ran it):
boxes are (x1, y1, x2, y2) in Matlab's 1-based pixel coordinates with inclusive widths `x2 - x1 + 1` (a
box crops the 1-based rows y1..y2, Python's `y1 - 1:y2`), and the landmarks, `w * p + x1 - 1` as in Matlab,
are 1-based too: the numbers SphereFace's `lfw_landmark.txt` holds and `align.align_face` expects.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torchvision.ops import batched_nms

NET_MEAN, NET_SCALE = 127.5, 0.0078125  # the nets' input normalisation: (x - 127.5) / 128
PNET_STRIDE, PNET_CELL = 2, 12
NMS_PER_SCALE, NMS_PER_IMAGE = 0.5, 0.7


def scale_pyramid(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """Scales at which the P-net's 12 px window covers faces from `min_face_size` up to the image size."""
    scale = 12.0 / min_face_size
    side = min(height, width) * scale
    scales = []
    while side >= 12:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


class AreaSampler:
    """Area (box-filter) resampling of integer rectangles of a batch of uint8 images (B, H, W, C), as
    `F.interpolate(crop, size, mode="area")` (adaptive average pooling: output row i covers input rows
    floor(i h / out) to ceil((i + 1) h / out)) computes it, for any number of rectangles in one gather of 4
    corners from an integer integral image: exact sums, one rounding in the division. Serves the P-net's
    pyramid (whole images) and the R- and O-net crops (candidate boxes) from the same table."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"need uint8 images (B, H, W, C), got {images.dtype} {tuple(images.shape)}")
        self.batch, self.height, self.width, self.channels = images.shape
        exact_in_int32 = 255 * self.height * self.width < 2 ** 31
        table = torch.zeros(self.batch, self.height + 1, self.width + 1, self.channels,
                            dtype=torch.int32 if exact_in_int32 else torch.int64, device=images.device)
        table[:, 1:, 1:] = images.cumsum(1, dtype=table.dtype)
        table[:, 1:, 1:].cumsum_(2)  # in place: one temporary of the batch's size, not two
        self.table = table.reshape(-1, self.channels)

    def resize(self, image_ids: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Rectangles (x0, y0, x1, y1), half-open integer pixel ranges inside images[image_ids], each
        resampled to `size` (rows, cols): (K, C, rows, cols) float32."""
        rows, cols = size
        if len(boxes) == 0:
            return torch.zeros(0, self.channels, rows, cols, device=self.table.device)
        x0, y0, x1, y1 = boxes.long().unbind(1)
        top, bottom = self._bins(y0, y1 - y0, rows)
        left, right = self._bins(x0, x1 - x0, cols)
        # Flat row indices of the table; int32 when it fits (index arithmetic and index_select are the
        # cost here, several times cheaper than int64 and advanced indexing).
        index = torch.int32 if len(self.table) < 2 ** 31 else torch.int64
        base = image_ids.long()[:, None] * ((self.height + 1) * (self.width + 1))
        top, bottom = (base + top * (self.width + 1)).to(index), (base + bottom * (self.width + 1)).to(index)
        left, right = left.to(index), right.to(index)

        def corner(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
            return self.table.index_select(0, (row[:, :, None] + col[:, None, :]).reshape(-1))

        sums = corner(bottom, right) - corner(top, right) - corner(bottom, left) + corner(top, left)
        areas = ((bottom - top) // (self.width + 1))[:, :, None] * (right - left)[:, None, :]
        sums = sums.view(len(boxes), rows, cols, self.channels).float()
        return (sums / areas.float().unsqueeze(-1)).permute(0, 3, 1, 2)

    def whole(self, size: tuple[int, int]) -> torch.Tensor:
        """Every image resampled to `size`: one level of the P-net's pyramid."""
        ids = torch.arange(self.batch, device=self.table.device)
        full = torch.tensor([[0, 0, self.width, self.height]], device=self.table.device).expand(self.batch, 4)
        return self.resize(ids, full, size)

    @staticmethod
    def _bins(start: torch.Tensor, length: torch.Tensor, out: int) -> tuple[torch.Tensor, torch.Tensor]:
        steps = torch.arange(out, device=start.device)
        length = length[:, None]
        return (start[:, None] + steps * length // out,
                start[:, None] + ((steps + 1) * length + out - 1) // out)  # ATen's start_index / end_index


def _candidates(regression: torch.Tensor, probability: torch.Tensor, scale: float, threshold: float):
    """P-net windows scoring >= threshold at one scale: (N, 9) rows [x1, y1, x2, y2, score, 4 offsets] in
    the original image, and their image index."""
    mask = probability >= threshold
    where = mask.nonzero()
    cells = where[:, 1:].to(regression.dtype).flip(1)  # (x, y) on the P-net's output map
    top_left = ((PNET_STRIDE * cells + 1) / scale).floor()
    bottom_right = ((PNET_STRIDE * cells + PNET_CELL) / scale).floor()
    offsets = regression.permute(1, 0, 2, 3)[:, mask].t()
    return torch.cat([top_left, bottom_right, probability[mask][:, None], offsets], dim=1), where[:, 0]


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Each box grown about its centre to a square of its longer side (MTCNN's `rerec`)."""
    height, width = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
    side = torch.maximum(width, height)
    x1 = boxes[:, 0] + width * 0.5 - side * 0.5
    y1 = boxes[:, 1] + height * 0.5 - side * 0.5
    return torch.cat([torch.stack([x1, y1, x1 + side, y1 + side], dim=1), boxes[:, 4:]], dim=1)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Box regression of the R- and O-nets (`bbreg`): offsets in units of the inclusive width/height."""
    width = boxes[:, 2] - boxes[:, 0] + 1
    height = boxes[:, 3] - boxes[:, 1] + 1
    moved = boxes[:, :4] + offsets * torch.stack([width, height, width, height], dim=1)
    return torch.cat([moved, boxes[:, 4:]], dim=1)


def _crop_boxes(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The part of each box inside the image as half-open integer pixel ranges (x0, y0, x1, y1): facenet's
    `pad` truncates the coordinates and crops rows y1 - 1 .. y2 - 1 (no zero padding outside the image)."""
    whole = boxes[:, :4].trunc().int()
    x0 = whole[:, 0].clamp(min=1) - 1
    y0 = whole[:, 1].clamp(min=1) - 1
    x1 = whole[:, 2].clamp(max=width)
    y1 = whole[:, 3].clamp(max=height)
    return torch.stack([x0, y0, x1, y1], dim=1)


def _nms_min(boxes: np.ndarray, scores: np.ndarray, image_ids: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS per image with overlap = intersection / smaller area (the O-net stage's 'Min' rule), in
    descending score order; inclusive widths as in the Matlab MTCNN."""
    keep = []
    for image in np.unique(image_ids):
        members = np.flatnonzero(image_ids == image)
        x1, y1, x2, y2 = boxes[members].T
        area = (x2 - x1 + 1) * (y2 - y1 + 1)
        remaining = np.argsort(scores[members])[::-1].tolist()  # positions within `members`
        while remaining:
            best, rest = remaining[0], np.array(remaining[1:], dtype=np.int64)
            keep.append(members[best])
            if not len(rest):
                break
            w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
            h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
            overlap = w * h / np.minimum(area[best], area[rest])
            remaining = rest[overlap <= threshold].tolist()
    return np.array(sorted(keep, key=lambda i: (image_ids[i], -scores[i])), dtype=np.int64)


def _run_in_chunks(net: nn.Module, crops: torch.Tensor, chunk: int = 512) -> tuple[torch.Tensor, ...]:
    outputs = [net(crops[i:i + chunk]) for i in range(0, len(crops), chunk)]
    return tuple(torch.cat(parts) for parts in zip(*outputs))


def _net_input(crops: torch.Tensor, channels_last: bool) -> torch.Tensor:
    crops = (crops - NET_MEAN) * NET_SCALE
    return crops.contiguous(memory_format=torch.channels_last) if channels_last else crops


def detect_faces(images: torch.Tensor, pnet: nn.Module, rnet: nn.Module, onet: nn.Module, min_face_size: float,
                 thresholds: tuple[float, float, float], factor: float, channels_last: bool = False
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """All faces in a batch of same-size uint8 RGB images (B, H, W, 3): per image (boxes (n, 5)
    [x1, y1, x2, y2, score], landmarks (n, 5, 2) (x, y)) as float64 arrays, by descending score."""
    batch, height, width, _ = images.shape
    sampler = AreaSampler(images)
    found = [(np.zeros((0, 5)), np.zeros((0, 5, 2))) for _ in range(batch)]
    # Stage 1: the P-net slides over a pyramid; NMS per scale and image, then per image.
    boxes, image_ids = [], []
    for scale in scale_pyramid(height, width, min_face_size, factor):
        size = (int(height * scale + 1), int(width * scale + 1))
        level = _net_input(sampler.whole(size), channels_last)
        regression, probability = pnet(level)
        candidates, ids = _candidates(regression, probability[:, 1], scale, thresholds[0])
        pick = batched_nms(candidates[:, :4], candidates[:, 4], ids, NMS_PER_SCALE)
        boxes.append(candidates[pick])
        image_ids.append(ids[pick])
    if not boxes:  # images smaller than the smallest face
        return found
    boxes, image_ids = torch.cat(boxes), torch.cat(image_ids)
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_ids, NMS_PER_IMAGE)
    boxes, image_ids = boxes[pick], image_ids[pick]
    width_, height_ = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]  # P-net offsets: exclusive sizes
    moved = boxes[:, :4] + boxes[:, 5:9] * torch.stack([width_, height_, width_, height_], dim=1)
    boxes = _square(torch.cat([moved, boxes[:, 4:5]], dim=1))

    # Stage 2: the R-net rescores 24 x 24 crops and refines the boxes.
    if len(boxes):
        boxes, image_ids, inside = _inside_parts(boxes, image_ids, height, width)
        crops = sampler.resize(image_ids, inside, (24, 24))
        offsets, scores = _run_in_chunks(rnet, _net_input(crops, channels_last))
        keep = scores[:, 1] > thresholds[1]
        boxes = torch.cat([boxes[keep, :4], scores[keep, 1:2]], dim=1)
        image_ids, offsets = image_ids[keep], offsets[keep]
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_ids, NMS_PER_IMAGE)
        boxes = _square(_regress(boxes[pick], offsets[pick]))
        image_ids = image_ids[pick]

    # Stage 3: the O-net rescores 48 x 48 crops, refines the boxes and places the 5 landmarks.
    if not len(boxes):
        return found
    boxes, image_ids, inside = _inside_parts(boxes, image_ids, height, width)
    crops = sampler.resize(image_ids, inside, (48, 48))
    offsets, points, scores = _run_in_chunks(onet, _net_input(crops, channels_last))
    keep = scores[:, 1] > thresholds[2]
    boxes = torch.cat([boxes[keep, :4], scores[keep, 1:2]], dim=1)
    image_ids, offsets, points = image_ids[keep], offsets[keep], points[keep]
    box_width = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    box_height = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    landmarks = torch.stack([box_width * points[:, :5] + boxes[:, 0:1] - 1,
                             box_height * points[:, 5:] + boxes[:, 1:2] - 1], dim=2)
    boxes = _regress(boxes, offsets)
    boxes, landmarks = boxes.double().cpu().numpy(), landmarks.double().cpu().numpy()
    image_ids = image_ids.cpu().numpy()
    pick = _nms_min(boxes[:, :4], boxes[:, 4], image_ids, NMS_PER_IMAGE)
    for image in range(batch):
        mine = pick[image_ids[pick] == image]
        found[image] = (boxes[mine], landmarks[mine])
    return found


def _inside_parts(boxes: torch.Tensor, image_ids: torch.Tensor, height: int, width: int):
    """The boxes with some part inside the image, their image indices, and those parts (`_crop_boxes`).
    facenet skips the crops of the others but keeps their rows, pairing later boxes with wrong scores."""
    parts = _crop_boxes(boxes, height, width)
    inside = (parts[:, 2] > parts[:, 0]) & (parts[:, 3] > parts[:, 1])
    return boxes[inside], image_ids[inside], parts[inside]
