"""Our MTCNN cascade (mtcnn.py) against facenet-pytorch's own `detect_face`, and its area resampling against
a float64 average written from the pooling-bin formula and against `F.interpolate(mode="area")`."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from facenet_pytorch.models.utils.detect_face import detect_face
from test_face import SHARED, astronaut_view

from uniformface.align.face import MIN_FACE_SIZE, SCALE_FACTOR, THRESHOLDS
from uniformface.base.images import decode_rgb
from uniformface.align.mtcnn import AreaSampler, _inside_parts, detect_faces, scale_pyramid

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def area_reference(image, box, rows, cols):
    """image (H, W, C) uint8, box (x0, y0, x1, y1) half-open: output bin (i, j) is the float64 mean of input
    rows floor(i h / rows) .. ceil((i + 1) h / rows) - 1 and the same for columns."""
    x0, y0, x1, y1 = box
    crop = image[y0:y1, x0:x1].astype(np.float64)
    h, w = crop.shape[:2]
    out = np.zeros((crop.shape[2], rows, cols))
    for i in range(rows):
        r0, r1 = math.floor(i * h / rows), math.ceil((i + 1) * h / rows)
        for j in range(cols):
            c0, c1 = math.floor(j * w / cols), math.ceil((j + 1) * w / cols)
            out[:, i, j] = crop[r0:r1, c0:c1].mean(axis=(0, 1))
    return out


def test_area_resize_is_the_bin_average_and_interpolates_like_torch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 61, 77, 3), dtype=np.uint8)
    sampler = AreaSampler(torch.from_numpy(images))
    boxes = [(0, 0, 77, 61), (5, 7, 50, 58), (70, 0, 77, 9), (10, 10, 13, 12), (0, 30, 24, 54), (33, 3, 34, 4)]
    ids = [0, 1, 2, 0, 1, 2]  # downsampling, upsampling (3 x 2 and 1 x 1 boxes to 24 x 24), edges
    got = sampler.resize(torch.tensor(ids), torch.tensor(boxes), (24, 24))
    assert got.shape == (6, 3, 24, 24) and got.dtype == torch.float32
    for k, (box, image) in enumerate(zip(boxes, ids)):
        expected = area_reference(images[image], box, 24, 24)
        np.testing.assert_allclose(got[k].double().numpy(), expected, rtol=0, atol=2e-5)
        x0, y0, x1, y1 = box
        crop = torch.from_numpy(images[image, y0:y1, x0:x1]).permute(2, 0, 1)[None].float()
        torch.testing.assert_close(got[k], F.interpolate(crop, size=(24, 24), mode="area")[0], rtol=0, atol=1e-4)
    whole = sampler.whole((31, 45))  # a pyramid level: non-square, whole images
    for image in range(3):
        expected = area_reference(images[image], (0, 0, 77, 61), 31, 45)
        np.testing.assert_allclose(whole[image].double().numpy(), expected, rtol=0, atol=2e-5)
    assert sampler.resize(torch.zeros(0), torch.zeros(0, 4), (48, 48)).shape == (0, 3, 48, 48)
    with pytest.raises(ValueError, match="uint8"):
        AreaSampler(torch.zeros(1, 8, 8, 3))


def test_scale_pyramid_is_mtcnns():
    """12 / min_face_size, times factor while the shorter side stays >= 12 px."""
    scales = scale_pyramid(250, 300, 20, 0.85)
    assert scales[0] == 0.6 and all(math.isclose(b / a, 0.85) for a, b in zip(scales, scales[1:]))
    assert 250 * scales[-1] >= 12 > 250 * scales[-1] * 0.85
    assert scale_pyramid(11, 400, 20, 0.85) == [] and len(scale_pyramid(20, 20, 20, 0.85)) == 1


def facenet_faces(batch, detector):
    """facenet-pytorch's own cascade on the same nets: per image (boxes (n, 5), points (n, 5, 2))."""
    m = detector.mtcnn
    with torch.inference_mode():
        boxes, points = detect_face(torch.from_numpy(batch).float(), MIN_FACE_SIZE, m.pnet, m.rnet, m.onet,
                                    list(THRESHOLDS), SCALE_FACTOR, "cpu")
    return [(np.asarray(b.tolist(), np.float64).reshape(-1, 5), np.asarray(p.tolist(), np.float64).reshape(-1, 5, 2))
            for b, p in zip(boxes, points)]


def assert_same_faces(ours, theirs):
    for index, ((boxes, points), (their_boxes, their_points)) in enumerate(zip(ours, theirs)):
        assert boxes.shape == their_boxes.shape, index
        order, their_order = np.lexsort(boxes[:, :2].T), np.lexsort(their_boxes[:, :2].T)
        np.testing.assert_allclose(boxes[order], their_boxes[their_order], rtol=0, atol=1e-3)
        np.testing.assert_allclose(points[order], their_points[their_order], rtol=0, atol=1e-3)


def test_cascade_finds_facenets_faces_and_landmarks(detector):
    faceless = np.random.default_rng(3).integers(90, 150, size=(250, 250, 3), dtype=np.uint8)
    photos = np.stack([astronaut_view(), astronaut_view(angle=18), astronaut_view(scale=1.5), faceless,
                       astronaut_view(scale=0.75, shift=(25, -15)), astronaut_view(angle=-12, scale=2.2)])
    m = detector.mtcnn
    with torch.inference_mode():
        ours = detect_faces(torch.from_numpy(photos), m.pnet, m.rnet, m.onet, MIN_FACE_SIZE, THRESHOLDS, SCALE_FACTOR,
                            channels_last=True)
    theirs = facenet_faces(photos, detector)
    assert sum(len(b) for b, _ in theirs) >= 5 and len(theirs[3][0]) == 0  # faces were found; none in noise
    assert_same_faces(ours, theirs)
    for boxes, points in ours:
        assert boxes.dtype == np.float64 and points.dtype == np.float64
        assert list(boxes[:, 4]) == sorted(boxes[:, 4], reverse=True)  # by descending score


@pytest.mark.skipif(not (SHARED / "images" / "t1.jpg").exists(), reason="shared group photo not present")
def test_cascade_on_a_group_photo_matches_facenet(detector):
    photo = np.array(decode_rgb(SHARED / "images" / "t1.jpg", max_side=640))  # writable, for torch.from_numpy
    m = detector.mtcnn
    with torch.inference_mode():
        ours = detect_faces(torch.from_numpy(photo[None]), m.pnet, m.rnet, m.onet, MIN_FACE_SIZE, THRESHOLDS,
                            SCALE_FACTOR)
    theirs = facenet_faces(photo[None], detector)
    assert len(theirs[0][0]) >= 2
    assert_same_faces(ours, theirs)


def test_boxes_wholly_outside_the_image_are_dropped():
    """facenet skips their crops but keeps their rows, pairing later boxes with the wrong scores."""
    boxes = torch.tensor([[10.0, 10.0, 40.0, 40.0, 0.9], [-50.0, 5.0, -20.0, 35.0, 0.8], [60.0, 70.0, 90.0, 99.0, 0.7],
                          [30.0, 130.0, 60.0, 160.0, 0.6]])
    kept, ids, parts = _inside_parts(boxes, torch.tensor([0, 0, 1, 1]), height=100, width=80)
    assert kept[:, 4].tolist() == pytest.approx([0.9, 0.7]) and ids.tolist() == [0, 1]
    assert parts.tolist() == [[9, 9, 40, 40], [59, 69, 80, 99]]  # facenet's rows y1 - 1 .. y2 - 1, clipped


def test_images_smaller_than_the_smallest_face_have_no_faces(detector):
    m = detector.mtcnn
    tiny = torch.full((2, 15, 40, 3), 128, dtype=torch.uint8)
    with torch.inference_mode():
        found = detect_faces(tiny, m.pnet, m.rnet, m.onet, MIN_FACE_SIZE, THRESHOLDS, SCALE_FACTOR)
    assert [(len(b), len(p)) for b, p in found] == [(0, 0), (0, 0)]
