"""Alignment (SPEC §7): template, least-squares similarity, warp convention, MTCNN wrapper, image loading.
Faces are real photos made from scikit-image's astronaut; the detector uses the weights shipped inside
facenet-pytorch (no download)."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from uniformface.align import (TEMPLATE_112x96, ImageLoadError, align_face, load_rgb, read_rgb,
                               similarity_transform, template, to_original, to_reduced)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FACE_CENTRE = (226, 122)  # the astronaut's face in data.astronaut(), (x, y)


def astronaut_view(angle=0.0, scale=1.0, shift=(0, 0), size=250):
    """A size x size photo of the astronaut's face: turned `angle` degrees about the face, field of view
    `scale` times the default, moved by `shift` pixels."""
    photo = Image.fromarray(data.astronaut())
    cx, cy = FACE_CENTRE
    photo = photo.rotate(angle, center=(cx, cy), resample=Image.Resampling.BICUBIC)
    half = 125 * scale
    box = (cx - half + shift[0], cy - half + shift[1], cx + half + shift[0], cy + half + shift[1])
    return np.asarray(photo.crop(box).resize((size, size), Image.Resampling.BICUBIC))


def lstsq_similarity(src, dst):
    """Independent solution: u = a x - b y + tx, v = b x + a y + ty, solved by numpy least squares."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(np.asarray(src, np.float64), np.asarray(dst, np.float64)):
        rows += [[x, -y, 1.0, 0.0], [y, x, 0.0, 1.0]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty], [0.0, 0.0, 1.0]])


def apply(matrix, points):
    return np.asarray(points, np.float64) @ matrix[:2, :2].T + matrix[:2, 2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------ geometry

def test_template_is_the_official_one_and_112x112_adds_8_to_x():
    official = [(30.2946, 51.6963), (65.5318, 51.5014), (48.0252, 71.7366), (33.5493, 92.3655), (62.7299, 92.2041)]
    assert TEMPLATE_112x96.dtype == np.float64 and TEMPLATE_112x96.shape == (5, 2)
    for (x, y), row in zip(official, template((112, 96))):
        assert row[0] == x and row[1] == y
    for (x, y), row in zip(official, template((112, 112))):
        assert row[0] == pytest.approx(x + 8.0, abs=1e-12) and row[1] == y
    with pytest.raises(ValueError, match="output_size"):
        template((96, 112))


def test_similarity_transform_is_the_least_squares_solution():
    rng = np.random.default_rng(1)
    for _ in range(5):
        src = rng.uniform(50, 200, size=(5, 2))
        got = similarity_transform(src, TEMPLATE_112x96)
        np.testing.assert_allclose(got, lstsq_similarity(src, TEMPLATE_112x96), rtol=0, atol=1e-9)
    # noise-free points: the transform is recovered exactly
    angle, scale, shift = np.deg2rad(17.0), 0.8, np.array([12.0, -7.0])
    known = np.array([[scale * np.cos(angle), -scale * np.sin(angle), shift[0]],
                      [scale * np.sin(angle), scale * np.cos(angle), shift[1]], [0, 0, 1]])
    np.testing.assert_allclose(similarity_transform(src, apply(known, src)), known, atol=1e-9)
    with pytest.raises(ValueError):
        similarity_transform(np.zeros((5, 2)), TEMPLATE_112x96)


def test_warp_samples_the_source_bilinearly_at_pixel_centres():
    """Bilinear interpolation of a linear ramp is exact, so every output pixel must equal the ramp at the
    source position that the independently solved transform assigns to it (x = column, y = row)."""
    height, width = 130, 120
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    ramp = np.stack([2.0 * xs + 5, ys + 3, np.full_like(xs, 100.0)], axis=-1)
    image = ramp.astype(np.uint8)  # integer ramp values: exact in uint8
    rng = np.random.default_rng(2)
    angle = np.deg2rad(12.0)
    place = np.array([[0.9 * np.cos(angle), -0.9 * np.sin(angle), 8.0], [0.9 * np.sin(angle), 0.9 * np.cos(angle), 6.0],
                      [0, 0, 1]])
    landmarks = apply(place, TEMPLATE_112x96) + rng.normal(0, 1.0, (5, 2))

    out = align_face(image, landmarks).astype(np.float64)
    assert out.shape == (112, 96, 3)
    back = np.linalg.inv(lstsq_similarity(landmarks, TEMPLATE_112x96))
    rows, cols = np.mgrid[0:112, 0:96].astype(np.float64)
    sx = back[0, 0] * cols + back[0, 1] * rows + back[0, 2]
    sy = back[1, 0] * cols + back[1, 1] * rows + back[1, 2]
    inside = (sx >= 0) & (sx <= width - 1) & (sy >= 0) & (sy <= height - 1)
    assert inside.mean() > 0.8
    np.testing.assert_allclose(out[..., 0][inside], (2.0 * sx + 5)[inside], atol=0.5 + 1e-3)
    np.testing.assert_allclose(out[..., 1][inside], (sy + 3)[inside], atol=0.5 + 1e-3)
    far_outside = (sx < -1) | (sx > width) | (sy < -1) | (sy > height)
    assert far_outside.any() and (out[far_outside] == 0).all()  # Matlab imtransform's fill value


# ------------------------------------------------------------------------------------------ detector

def redetect_on_aligned(detector, aligned):
    """Landmarks of an aligned crop, in its own pixels: MTCNN run on the crop padded by its edge pixels
    (so that it sees a whole head) at five padding widths, median per coordinate. At 112 px one detection
    varies by 1-2 px (sometimes 5) with the padding alone; the median is steady to about 0.5 px."""
    pads = (24, 32, 40, 48, 56)
    found = []
    for pad in pads:
        points = detector.detect(np.pad(aligned, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
        assert points is not None, f"no face re-detected at padding {pad}"
        found.append(points - pad)
    return np.median(np.stack(found), axis=0)


def template_shaped_astronaut(detector, rounds=4):
    """The astronaut photo bent (thin-plate spline, image border fixed) until MTCNN finds her 5 landmarks
    within 1.5 px of an exact similarity image of the template: a real face that a similarity can map onto
    the template, which her own proportions cannot (least-squares residual about 2.5-6.3 px). Each round
    moves the spline's source points to where the last detection came from."""
    from skimage.transform import ThinPlateSplineTransform, warp

    photo = data.astronaut()
    found = detector.detect(photo)
    target = apply(np.linalg.inv(lstsq_similarity(found, TEMPLATE_112x96)), TEMPLATE_112x96)
    h, w = photo.shape[:2]
    border = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1], [w / 2, 0], [w / 2, h - 1], [0, h / 2],
                       [w - 1, h / 2]], np.float64)
    source = found
    for _ in range(rounds):
        spline = ThinPlateSplineTransform.from_estimate(np.vstack([target, border]), np.vstack([source, border]))
        assert spline, spline
        bent = np.rint(warp(photo, spline, order=1, preserve_range=True)).astype(np.uint8)
        found = detector.detect(bent)
        assert found is not None
        if np.linalg.norm(found - target, axis=1).max() < 1.5:
            return bent, found
        source = spline(found)
    raise AssertionError(f"landmarks still {np.linalg.norm(found - target, axis=1).max():.2f} px from the target")


def test_landmarks_redetected_on_the_aligned_face_lie_within_2px_of_the_template(detector):
    """Issue 5, item 1, on a face whose landmarks a similarity can put on the template (see
    template_shaped_astronaut); for her unbent face the fit itself leaves more than 2 px, tested below."""
    photo, found = template_shaped_astronaut(detector)
    for size in [(112, 96), (112, 112)]:
        again = redetect_on_aligned(detector, align_face(photo, found, size))
        assert np.linalg.norm(again - template(size), axis=1).max() < 2.0, size


def test_landmarks_redetected_on_the_aligned_face_land_where_the_transform_sent_them(detector):
    """On the unbent photo, re-detection on the aligned crop must agree with the transformed original
    landmarks within 2 px. They differ from the template itself by the residual of the 5-point
    least-squares fit, more than 2 px for this face: a similarity cannot fit every face."""
    photo = data.astronaut()
    found = detector.detect(photo)
    assert found is not None and found.shape == (5, 2) and found.dtype == np.float64
    for size in [(112, 96), (112, 112)]:
        expected = apply(lstsq_similarity(found, template(size)), found)
        assert np.linalg.norm(expected - template(size), axis=1).max() > 2.0  # why the bent face above
        again = redetect_on_aligned(detector, align_face(photo, found, size))
        assert np.linalg.norm(again - expected, axis=1).max() < 2.0, size


def test_aligned_face_is_nearly_the_same_under_rotation_scale_shift_and_greyscale(detector):
    """Tolerance: over the face region, each view's crop must differ from the reference crop by less
    (mean absolute difference) than the reference differs from itself moved by 2 pixels, i.e. the views
    are aligned to better than 2 px. A 1 px move of the reference already costs about 8 grey levels."""
    reference_photo = astronaut_view()
    reference = align_face(reference_photo, detector.detect(reference_photo)).astype(np.float64)
    face = (slice(16, 104), slice(12, 84))
    tolerance = np.abs(reference[:, 2:][face] - reference[:, :-2][face]).mean()
    assert tolerance > 10  # the bound can fail: a 2 px error is visible

    views = [astronaut_view(angle=20), astronaut_view(angle=-20), astronaut_view(scale=1.6),
             astronaut_view(scale=0.7), astronaut_view(shift=(30, -20)), astronaut_view(shift=(-25, 15))]
    for index, (view, landmarks) in enumerate(zip(views, detector.detect_batch(views))):
        assert landmarks is not None, f"view {index}: no face"
        aligned = align_face(view, landmarks).astype(np.float64)
        assert np.abs(aligned[face] - reference[face]).mean() < tolerance, f"view {index}"

    grey = np.asarray(Image.fromarray(reference_photo).convert("L"))
    grey_aligned = align_face(grey, detector.detect(np.repeat(grey[:, :, None], 3, axis=2))).astype(np.float64)
    assert np.all(grey_aligned[..., 0] == grey_aligned[..., 2])
    reference_grey = np.asarray(Image.fromarray(reference.astype(np.uint8)).convert("L")).astype(np.float64)
    assert np.abs(grey_aligned[..., 0][face] - reference_grey[face]).mean() < tolerance


def test_the_face_nearest_the_image_centre_is_kept_not_the_largest(detector):
    small, large = astronaut_view(size=150), astronaut_view(size=260)
    for large_left in (50, 290):  # large face away from the centre, then large face nearer the centre
        canvas = np.full((360, 640, 3), 128, np.uint8)
        small_left = 470 if large_left == 290 else 330
        canvas[50:310, large_left:large_left + 260] = large
        canvas[105:255, small_left:small_left + 150] = small
        boxes, _ = detector.mtcnn.detect(canvas)
        assert len(boxes) >= 2  # both faces are found; only the selection is under test
        centres = {"large": large_left + 130, "small": small_left + 75}
        nearest = min(centres, key=lambda k: abs(centres[k] - 319.5))
        landmarks = detector.detect(canvas)
        assert abs(landmarks[:, 0].mean() - centres[nearest]) < 40, (large_left, landmarks)


def test_batched_detection_equals_one_image_at_a_time(detector):
    faceless = np.random.default_rng(3).integers(100, 140, size=(250, 250, 3), dtype=np.uint8)
    images = [astronaut_view(angle=10), astronaut_view(scale=1.3, size=200), faceless, astronaut_view(shift=(20, 5)),
              astronaut_view(angle=-15, size=200), astronaut_view(scale=0.8), np.zeros((12, 12, 3), np.uint8)]
    detector.batch_size = 2  # also exercises splitting a same-size group into several MTCNN calls
    try:
        batched = detector.detect_batch(images)
    finally:
        detector.batch_size = 8
    for index, image in enumerate(images):
        alone = detector.detect(image)
        if index in (2, 6):
            assert alone is None and batched[index] is None
        else:
            assert alone is not None and np.abs(batched[index] - alone).max() <= 0.5, index


def test_cuda_detector_finds_the_cpus_landmarks(cuda, detector):
    from uniformface.align import FaceDetector

    views = [astronaut_view(), astronaut_view(angle=15), astronaut_view(scale=1.4), astronaut_view(shift=(20, -10))]
    on_gpu = FaceDetector(device=str(cuda)).detect_batch(views)
    for index, (gpu, cpu) in enumerate(zip(on_gpu, detector.detect_batch(views))):
        assert gpu is not None and cpu is not None, index
        assert np.abs(gpu - cpu).max() <= 0.5, index


# ------------------------------------------------------------------------------------------- loading

def test_modes_are_converted_to_rgb(tmp_path):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.png")
    grey = np.asarray(Image.open(tmp_path / "grey.png"))
    np.testing.assert_array_equal(load_rgb(tmp_path / "grey.png"), np.repeat(grey[:, :, None], 3, axis=2))

    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(load_rgb(tmp_path / "rgba.png"), rgb)  # alpha dropped, as Matlab's imread

    Image.fromarray(rgb).quantize(16).save(tmp_path / "palette.png")
    with Image.open(tmp_path / "palette.png") as img:
        table = np.array(img.getpalette(), np.uint8).reshape(-1, 3)
        expected = table[np.asarray(img)]
    np.testing.assert_array_equal(load_rgb(tmp_path / "palette.png"), expected)

    smooth = np.asarray(Image.fromarray(rgb).resize((14, 10)).resize((56, 40), Image.Resampling.BILINEAR))
    Image.fromarray(smooth).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=98)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    assert np.abs(load_rgb(tmp_path / "cmyk.jpg").astype(int) - smooth).mean() < 3

    deep = np.array([[0, 1000, 32896, 65535]], np.uint16).repeat(3, axis=0)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    got = load_rgb(tmp_path / "deep.png")
    expected_row = [round(v * 255 / 65535) for v in (0, 1000, 32896, 65535)]  # 0, 4, 128, 255: scaled, not clipped
    assert got.dtype == np.uint8 and got[1, :, 0].tolist() == expected_row and (got[..., 0] == got[..., 2]).all()


def test_exif_orientation_is_applied(tmp_path):
    pattern = np.zeros((60, 100, 3), np.uint8)
    pattern[:, 50:] = 220  # bright right half
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    Image.fromarray(pattern).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    pixels, scale = read_rgb(tmp_path / "turned.jpg")
    assert pixels.shape == (100, 60, 3) and scale == (1.0, 1.0)
    assert np.abs(pixels.astype(int) - np.rot90(pattern, k=-1)).mean() < 3


def test_large_images_are_reduced_and_points_map_back(tmp_path):
    """An area-averaged ramp stays a ramp, sampled at the reduced pixel's centre in the original:
    this pins the coordinate convention of to_original."""
    width, height = 3000, 2000
    xs = np.arange(width, dtype=np.float64)
    ramp = np.tile((xs * 250 / (width - 1))[None, :, None], (height, 1, 3))
    Image.fromarray(np.rint(ramp).astype(np.uint8)).save(tmp_path / "big.png")
    pixels, (sx, sy) = read_rgb(tmp_path / "big.png", max_side=1600)
    assert max(pixels.shape[:2]) == 1600 and (sx, sy) == (width / pixels.shape[1], height / pixels.shape[0])
    columns = np.arange(pixels.shape[1], dtype=np.float64)
    original_x = (columns + 0.5) * sx - 0.5
    inner = slice(2, -2)
    np.testing.assert_allclose(pixels[800, inner, 0], (original_x * 250 / (width - 1))[inner], atol=1.0)
    points = np.array([[10.0, 20.0], [1500.0, 999.0]])
    np.testing.assert_allclose(to_original(to_reduced(points, (sx, sy)), (sx, sy)), points, atol=1e-9)
    assert read_rgb(tmp_path / "big.png")[0].shape == (height, width, 3)  # no max_side: untouched


def test_8000px_photo_is_detected_on_a_reduced_copy(tmp_path, detector):
    photo = data.astronaut()
    side = 8000
    Image.fromarray(photo).resize((side, side), Image.Resampling.BILINEAR).save(tmp_path / "huge.jpg", quality=90)
    pixels, scale = read_rgb(tmp_path / "huge.jpg", max_side=1600)
    assert max(pixels.shape[:2]) <= 1600
    found = detector.detect(pixels)
    expected = detector.detect(photo)
    # back on the 8000 px image, then down to the 512 px photo: within 2 px of detecting on the photo itself
    on_photo = (to_original(found, scale) + 0.5) * (512 / side) - 0.5
    assert np.abs(on_photo - expected).max() < 2.0


def test_broken_files_raise_a_clear_error_naming_the_file(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(astronaut_view(size=120)).save(good)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    (tmp_path / "text.jpg").write_text("not a picture")
    for name in ("empty.jpg", "truncated.jpg", "text.jpg", "absent.jpg"):
        with pytest.raises(ImageLoadError, match=name):
            load_rgb(tmp_path / name)


@pytest.mark.skipif(not (SHARED / "images" / "t1.jpg").exists(), reason="shared group photo not present")
def test_group_photo_keeps_one_face_near_the_centre(detector):
    photo = load_rgb(SHARED / "images" / "t1.jpg", max_side=640)  # half size: faces stay well above 20 px
    boxes, _ = detector.mtcnn.detect(photo)
    landmarks = detector.detect(photo)
    assert boxes is not None and len(boxes) >= 2 and landmarks is not None
    boxes = np.asarray(boxes.tolist(), np.float64)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    image_centre = np.array([(photo.shape[1] - 1) / 2, (photo.shape[0] - 1) / 2])
    nearest = boxes[np.argmin(((centres - image_centre) ** 2).sum(1))]
    assert (landmarks[:, 0] >= nearest[0]).all() and (landmarks[:, 0] <= nearest[2]).all()
    assert (landmarks[:, 1] >= nearest[1]).all() and (landmarks[:, 1] <= nearest[3]).all()


def test_detector_uses_the_official_sphereface_settings_not_facenets():
    """SPEC §7: min face 20, thresholds [0.6, 0.7, 0.9], scale factor 0.85 (facenet: 0.7 and 0.709)."""
    from uniformface.align import FaceDetector

    detector = FaceDetector()  # what mtcnn.detect_faces is given
    assert (detector.min_face_size, detector.thresholds, detector.factor) == (20, (0.6, 0.7, 0.9), 0.85)
    mtcnn = detector.mtcnn  # and facenet's object, used by tests that call it directly
    assert (mtcnn.min_face_size, list(mtcnn.thresholds), mtcnn.factor) == (20, [0.6, 0.7, 0.9], 0.85)
