"""The crop's geometry (`crop.py`, face_align_demo.m): the template and Matlab's cp2tform 'similarity'. The
reference is `cp2tform_reference` below, a float64 transcription of Matlab's cp2tform (findSimilarity /
findNonreflectiveSimilarity, Matlab's row-vector convention and `norm`) that shares no code with
`uniformface.align.crop`; the test of the warp (`align.align_face`) uses it too."""
from pathlib import Path

import numpy as np
import pytest

from uniformface.align.crop import TEMPLATE_112x96, cp2tform_similarity, crop_to_image, template

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LFW_LANDMARKS = SHARED / "lfw" / "lfw_landmark.txt"
# The row of SphereFace's LFW landmark file where fitting template -> image (cp2tform) and image -> template
# disagree most (found by test_the_row_where_the_fitting_directions_disagree_most...): a face in profile.
WORST_ROW = ("Franz_Muentefering/Franz_Muentefering_0003.jpg", [95, 117, 110, 121, 85, 146, 107, 165, 126, 165])


def similarity_transform(input_points: np.ndarray, base_points: np.ndarray) -> np.ndarray:
    """The 3x3 matrix (float64, column vectors) of `cp2tform(input_points, base_points, 'similarity')`,
    mapping the input points (image landmarks) towards the base points (template); see
    `cp2tform_similarity`. NOT the least-squares fit from input to base: cp2tform fits base -> input."""
    return cp2tform_similarity(input_points, base_points)[0]


def cp2tform_reference(uv, xy):
    """Matlab's `cp2tform(uv, xy, 'similarity')` for a batch (B, M, 2) of input points `uv` and base points
    `xy`, in Matlab's own terms: row vectors, [x y 1] = [u v 1] * T and [u v 1] = [x y 1] * Tinv.
    findNonreflectiveSimilarity solves X r = U in the least-squares sense (Matlab's X \\ U; here by the
    normal equations) with X = [x y 1 0; y -x 0 1] and U = [u; v], so the residual is measured among the
    input points; Tinv = [sc -ss 0; ss sc 0; tx ty 1], T = inv(Tinv) with T(:,3) = [0 0 1]'.
    findSimilarity repeats it with x negated (xyR), undoes the reflection (trans2r.T * TreflectY) and keeps
    the transform whose tformfwd(T, uv) - xy has the smaller `norm`, trans1 on a tie; Matlab's norm of a
    matrix is its largest singular value. Returns (T, Tinv), each (B, 3, 3), Tinv = inv(T) as maketform
    keeps it."""
    trans1, trans2 = cp2tform_candidates(uv, xy)
    norm1 = np.linalg.norm(tformfwd(trans1, uv) - xy, ord=2, axis=(1, 2))
    norm2 = np.linalg.norm(tformfwd(trans2, uv) - xy, ord=2, axis=(1, 2))
    T = np.where((norm1 <= norm2)[:, None, None], trans1, trans2)
    return T, np.linalg.inv(T)


def tformfwd(T, points):
    """Matlab's tformfwd for affine T, row vectors: [x y] = [u v 1] * T(:, 1:2)."""
    return np.asarray(points, np.float64) @ T[:, :2, :2] + T[:, 2:3, :2]


def cp2tform_candidates(uv, xy):
    """findSimilarity's two candidates (trans1, trans2), row-vector T matrices (B, 3, 3)."""
    uv, xy = np.asarray(uv, np.float64), np.asarray(xy, np.float64)

    def nonreflective(xy):
        x, y = xy[..., 0], xy[..., 1]
        one, zero = np.ones_like(x), np.zeros_like(x)
        X = np.concatenate([np.stack([x, y, one, zero], -1), np.stack([y, -x, zero, one], -1)], axis=1)
        U = np.concatenate([uv[..., 0], uv[..., 1]], axis=1)[..., None]
        Xt = np.swapaxes(X, 1, 2)
        sc, ss, tx, ty = np.linalg.solve(Xt @ X, Xt @ U)[..., 0].T
        Tinv = np.zeros((len(uv), 3, 3))
        Tinv[:, 0, 0], Tinv[:, 0, 1] = sc, -ss
        Tinv[:, 1, 0], Tinv[:, 1, 1] = ss, sc
        Tinv[:, 2, 0], Tinv[:, 2, 1], Tinv[:, 2, 2] = tx, ty, 1.0
        T = np.linalg.inv(Tinv)
        T[:, :, 2] = [0.0, 0.0, 1.0]
        return T

    trans1 = nonreflective(xy)
    xyR = xy.copy()
    xyR[..., 0] = -xyR[..., 0]
    trans2 = nonreflective(xyR) @ np.diag([-1.0, 1.0, 1.0])  # trans2r.T * TreflectY
    return trans1, trans2


def reference_crop_to_image(landmarks, size=(112, 96)):
    """The reference's output -> image map as a column-vector matrix (acting on (X, Y, 1)), for comparison
    with `crop_to_image`; landmarks (B, 5, 2)."""
    _, Tinv = cp2tform_reference(landmarks, np.broadcast_to(template(size), np.shape(landmarks)))
    return np.swapaxes(Tinv, 1, 2)


def image_to_template_fit(src, dst):
    """The other direction, the least-squares similarity from the image's points onto the template
    (u = a x - b y + tx, v = b x + a y + ty, residual in the crop), by numpy least squares: what this
    project fitted before; (B, 3, 3) column-vector matrices image -> crop."""
    out = []
    for s, d in zip(np.asarray(src, np.float64), np.broadcast_to(np.asarray(dst, np.float64), np.shape(src))):
        rows = np.concatenate([np.stack([s[:, 0], -s[:, 1], np.ones(len(s)), np.zeros(len(s))], 1),
                               np.stack([s[:, 1], s[:, 0], np.zeros(len(s)), np.ones(len(s))], 1)])
        a, b, tx, ty = np.linalg.lstsq(rows, np.concatenate([d[:, 0], d[:, 1]]), rcond=None)[0]
        out.append([[a, -b, tx], [b, a, ty], [0.0, 0.0, 1.0]])
    return np.array(out)


def apply(matrix, points):
    return np.asarray(points, np.float64) @ matrix[:2, :2].T + matrix[:2, 2]


def lfw_rows():
    if not LFW_LANDMARKS.exists():
        pytest.skip(f"SphereFace's LFW landmark file is not at {LFW_LANDMARKS}")
    names, values = [], []
    for line in LFW_LANDMARKS.read_text().splitlines():
        if line.strip():
            fields = line.split("\t")
            names.append(fields[0])
            values.append([float(v) for v in fields[1:]])
    return names, np.array(values).reshape(-1, 5, 2)


def crop_corners(size):
    """The 1-based crop positions (X, Y) of the crop's four corner pixels and its centre: an affine map is
    pinned on the whole crop by its values there."""
    rows, cols = size
    return np.array([[1, 1], [cols, 1], [1, rows], [cols, rows], [(cols + 1) / 2, (rows + 1) / 2]], np.float64)


def test_template_is_the_official_one_and_112x112_adds_8_to_x():
    official = [(30.2946, 51.6963), (65.5318, 51.5014), (48.0252, 71.7366), (33.5493, 92.3655), (62.7299, 92.2041)]
    assert TEMPLATE_112x96.dtype == np.float64 and TEMPLATE_112x96.shape == (5, 2)
    for (x, y), row in zip(official, template((112, 96))):
        assert row[0] == x and row[1] == y
    for (x, y), row in zip(official, template((112, 112))):
        assert row[0] == pytest.approx(x + 8.0, abs=1e-12) and row[1] == y
    with pytest.raises(ValueError, match="output_size"):
        template((96, 112))


def test_reference_transcription_reproduces_matlabs_published_example():
    """cp2tform's own numbers for a small example (printed by Matlab, quoted in clcarwin/sphereface_pytorch's
    matlab_cp2tform.py): a check that the transcription above reads Matlab right, to the 4 decimals shown."""
    uv = np.array([[0.0, 0.0], [6.0, 3.0], [-2.0, 5.0]])
    xy = np.array([[-1.0, -1.0], [0.0, -10.0], [4.0, 4.0]])
    T, Tinv = cp2tform_reference(uv[None], xy[None])
    np.testing.assert_allclose(T[0], [[-0.0764, -1.6190, 0], [1.6190, -0.0764, 0], [-3.2156, 0.0290, 1]], atol=1e-4)
    np.testing.assert_allclose(Tinv[0], [[-0.0291, 0.6163, 0], [-0.6163, -0.0291, 0], [-0.0756, 1.9826, 1]],
                               atol=1e-4)
    # the library agrees on it too (column vectors: the transpose)
    np.testing.assert_allclose(similarity_transform(uv, xy), T[0].T, atol=1e-12)


@pytest.mark.slow
def test_crop_to_image_is_cp2tform_on_every_row_of_sphereface_lfw_landmarks():
    """(a) All 13,233 rows of SphereFace's lfw_landmark.txt, both crop sizes: the crop -> image map the
    warp uses equals the reference transcription within 1e-6 px at the crop's corners and centre."""
    names, points = lfw_rows()
    assert len(names) == 13233
    for size in [(112, 96), (112, 112)]:
        expected = reference_crop_to_image(points, size)
        got = np.stack([crop_to_image(p, size) for p in points])
        corners = np.c_[crop_corners(size), np.ones(5)]
        error = np.abs(np.einsum("bij,kj->bki", got - expected, corners)[..., :2]).max()
        assert error < 1e-6, (size, error)
        # the image -> template direction (cp2tform's T) as well
        T, _ = cp2tform_reference(points, np.broadcast_to(template(size), points.shape))
        forward = np.stack([similarity_transform(p, template(size)) for p in points[:500]])
        np.testing.assert_allclose(forward, np.swapaxes(T[:500], 1, 2), rtol=0, atol=1e-9)
        # on real faces the plain (non-reflective) fit always wins
        assert (np.linalg.det(T[:, :2, :2]) > 0).all()


def test_the_row_where_the_fitting_directions_disagree_most_is_fitted_as_cp2tform_does():
    """(c) Fitting image -> template (residual in the crop, this project's earlier fit) instead of
    template -> image (cp2tform) moves the crop on nearly every LFW row; most on a face in profile, by more
    than 30 crop pixels at a corner. There the library must agree with cp2tform, and the old fit must not."""
    names, points = lfw_rows()
    size = (112, 96)
    corners = np.c_[crop_corners(size), np.ones(5)]
    official = np.einsum("bij,kj->bki", reference_crop_to_image(points, size), corners)[..., :2]
    old = np.einsum("bij,kj->bki", np.linalg.inv(image_to_template_fit(points, template(size))), corners)[..., :2]
    # how far the old crop's corners sit from the official ones, in crop pixels
    scale = np.sqrt(np.abs(np.linalg.det(reference_crop_to_image(points, size)[:, :2, :2])))
    disagreement = np.linalg.norm(old - official, axis=-1).max(axis=1) / scale
    assert np.mean(disagreement > 0.01) > 0.99  # test (a) would fail for the old fit on nearly every row
    worst = int(np.argmax(disagreement))
    assert names[worst] == WORST_ROW[0] and points[worst].ravel().tolist() == WORST_ROW[1]
    assert disagreement[worst] > 30
    got = crop_to_image(points[worst], size)
    assert np.abs((corners @ got.T)[:, :2] - official[worst]).max() < 1e-6


def test_mirror_image_landmarks_take_cp2tforms_reflective_alternative():
    """(d) Landmarks that are a mirror image of the template (then turned, scaled and moved): cp2tform
    keeps the reflective fit, exact here, so the crop shows the face mirrored back onto the template."""
    mirrored = TEMPLATE_112x96 * [-1.0, 1.0]
    angle = np.deg2rad(12.0)
    turn = 1.7 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = mirrored @ turn.T + [210.0, 40.0]
    T, Tinv = cp2tform_reference(landmarks[None], TEMPLATE_112x96[None])
    assert np.linalg.det(T[0, :2, :2]) < 0  # the reference picks the reflection
    forward = similarity_transform(landmarks, TEMPLATE_112x96)
    np.testing.assert_allclose(forward, T[0].T, atol=1e-9)
    np.testing.assert_allclose(crop_to_image(landmarks, (112, 96)), Tinv[0].T, atol=1e-9)
    np.testing.assert_allclose(apply(forward, landmarks), TEMPLATE_112x96, atol=1e-9)


def test_the_reflective_choice_uses_matlabs_matrix_norm():
    """cp2tform compares the two fits by Matlab's `norm` of the (5, 2) residual matrix, its largest
    singular value. These points (halfway between the template and its mirror image, plus noise) are a
    case where the Frobenius norm (numpy's default for a matrix) would choose the other fit."""
    points = np.array([[50.49, 49.17], [47.88, 60.31], [48.93, 67.1], [47.49, 86.1], [50.18, 100.36]])
    T, _ = cp2tform_reference(points[None], TEMPLATE_112x96[None])
    residuals = [tformfwd(trans, points[None])[0] - TEMPLATE_112x96
                 for trans in cp2tform_candidates(points[None], TEMPLATE_112x96[None])]
    spectral = [np.linalg.norm(r, 2) for r in residuals]
    frobenius = [np.linalg.norm(r) for r in residuals]
    assert (spectral[0] <= spectral[1]) != (frobenius[0] <= frobenius[1])  # the two rules disagree here
    assert (np.linalg.det(T[0, :2, :2]) > 0) == (spectral[0] <= spectral[1])
    np.testing.assert_allclose(similarity_transform(points, TEMPLATE_112x96), T[0].T, atol=1e-9)


def test_exact_similarity_images_are_recovered_and_coincident_landmarks_refused():
    rng = np.random.default_rng(1)
    src = rng.uniform(50, 200, size=(5, 2))
    angle, scale, shift = np.deg2rad(17.0), 0.8, np.array([12.0, -7.0])
    known = np.array([[scale * np.cos(angle), -scale * np.sin(angle), shift[0]],
                      [scale * np.sin(angle), scale * np.cos(angle), shift[1]], [0, 0, 1]])
    np.testing.assert_allclose(similarity_transform(src, apply(known, src)), known, atol=1e-9)
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.zeros((5, 2)), TEMPLATE_112x96)
    with pytest.raises(ValueError, match="N >= 3"):
        similarity_transform(src[:2], TEMPLATE_112x96[:2])
    with pytest.raises(ValueError, match="NaN"):
        similarity_transform(src * np.nan, TEMPLATE_112x96)
