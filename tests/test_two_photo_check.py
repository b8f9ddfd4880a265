"""The two-photo check behind verify.py: the rule read from test.py's results file, each aligned face's
feature formed with the flip of the rule's protocol, and the cosine after the stored feature mean.
verify.py itself, end to end on real photos, is tested in test_verify.py."""
import json

import numpy as np
import pytest
import torch

from uniformface.nn.models import build_model
from uniformface.eval.two_photo_check import face_features, load_rule, pair_cosine


def test_load_rule_variants(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"protocol": "insightface", "thresholds": [1.2, 1.4]}))
    rule = load_rule(path)  # an insightface run's thresholds are squared distances of unit vectors
    assert rule.feature_mean is None and rule.threshold == pytest.approx(1 - 1.3 / 2)
    path.write_text(json.dumps({"protocol": "sphereface", "thresholds": [0.3, 0.4]}))
    with pytest.raises(ValueError, match="no 'verify_rule'.*rerun"):
        load_rule(path)
    path.write_text("{")
    with pytest.raises(ValueError, match=r"r.json:1: not valid JSON"):
        load_rule(path)


def test_face_features_use_the_protocols_flip():
    """Against each face run alone through the network, normalised in numpy and mirrored by slicing:
    sphereface [f, f_flip]; insightface (f + f_flip) / |f + f_flip|; float64 out."""
    torch.manual_seed(0)
    model = build_model("sphereface4", 16).eval()
    faces = list(np.random.default_rng(1).integers(0, 256, (3, 112, 96, 3), dtype=np.uint8))
    expected = []
    for face in faces:
        pixels = (face.astype(np.float64) - 127.5) / 128
        views = [pixels, pixels[:, ::-1]]
        with torch.no_grad():
            f, f_flip = (model(torch.from_numpy(v.astype(np.float32).transpose(2, 0, 1).copy())[None])[0]
                         .double().numpy() for v in views)
        expected.append((f, f_flip))
    sphereface = face_features(model, faces, "sphereface")
    assert sphereface.dtype == np.float64 and sphereface.shape == (3, 32)
    np.testing.assert_allclose(sphereface, [np.concatenate(e) for e in expected], rtol=1e-5, atol=1e-6)
    insightface = face_features(model, faces, "insightface")
    assert insightface.shape == (3, 16)
    np.testing.assert_allclose(insightface, [(f + g) / np.linalg.norm(f + g) for f, g in expected], rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="unknown protocol 'plain'"):  # a rule holds one of the two protocols
        face_features(model, faces, "plain")


def test_pair_cosine_subtracts_the_stored_mean():
    a, b, mean = np.array([1.0, 2.0, 2.0]), np.array([2.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    assert pair_cosine(a, b, None) == pytest.approx(8 / 9, abs=1e-15)
    assert pair_cosine(a, b, mean) == pytest.approx(4 / 5, abs=1e-15)    # (0,1,2).(1,0,2) / 5
    with pytest.raises(ValueError, match="stored feature mean has 2 values but the model's features have 3"):
        pair_cosine(a, b, np.zeros(2))


def test_a_rule_that_is_not_finite_numbers_is_refused(tmp_path):
    """JSON allows NaN: a NaN threshold or feature mean would decide "different people" for every pair, so
    it is an error naming the file, as is a list where the threshold belongs or old fold thresholds that are
    not numbers."""
    path = tmp_path / "r.json"
    rule = {"protocol": "sphereface", "feature_mean": [0.0, 1.0], "cosine_threshold": 0.3, "fitted_on_pairs": 6}
    path.write_text(json.dumps({"verify_rule": rule}))
    assert load_rule(path).threshold == 0.3
    for bad in ({"cosine_threshold": float("nan")}, {"feature_mean": [0.0, float("inf")]},
                {"cosine_threshold": [0.3, 0.4]}, {"cosine_threshold": "high"}):
        path.write_text(json.dumps({"verify_rule": {**rule, **bad}}))
        with pytest.raises(ValueError, match=r"r\.json: verify_rule holds a .*rerun test\.py"):
            load_rule(path)
    path.write_text(json.dumps({"protocol": "insightface", "thresholds": [1.2, float("nan")]}))
    with pytest.raises(ValueError, match=r"r\.json: thresholds holds a value that is not a finite number"):
        load_rule(path)
    path.write_text(json.dumps({"protocol": "insightface", "thresholds": [1.2, "x"]}))
    with pytest.raises(ValueError, match=r"r\.json: thresholds holds a value that is not a number"):
        load_rule(path)


def test_pair_cosine_of_a_zero_feature_is_an_error_not_nan():
    a, b = np.array([1.0, 2.0, 2.0]), np.array([2.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="feature is zero"):
        pair_cosine(a, b, a.copy())
    with pytest.raises(ValueError, match="stored feature mean has 1 values but the model's features have 3"):
        pair_cosine(a, b, np.array(0.5))


def test_rule_numbers_whose_results_are_not_finite_are_refused(tmp_path):
    """Each number finite is not enough: a feature mean of 1e308 (finite) made the cosine's norms inf
    and the cosine NaN, answering "different people" for a photo against itself. What the rule computes
    must be finite and mean what it says: the mean's squared norm, a threshold that is a cosine, a mean
    of fold thresholds that is a squared distance of unit vectors (1e308s average to inf)."""
    path = tmp_path / "r.json"
    rule = {"protocol": "sphereface", "feature_mean": [0.0, 1.0], "cosine_threshold": 0.3, "fitted_on_pairs": 6}
    for bad, words in (({"feature_mean": [1e308, 1e308]}, "feature_mean is too large for a cosine"),
                       ({"feature_mean": [1e160, 0.0]}, "feature_mean is too large for a cosine"),
                       ({"cosine_threshold": 1e308}, "cosine_threshold 1e+308 is not a cosine (in [-1, 1])"),
                       ({"cosine_threshold": -1.5}, "cosine_threshold -1.5 is not a cosine"),
                       ({"protocol": "plain"}, "protocol 'plain' is not one of sphereface, insightface")):
        path.write_text(json.dumps({"verify_rule": {**rule, **bad}}))
        with pytest.raises(ValueError) as err:
            load_rule(path)
        assert str(err.value).startswith(f"{path}: verify_rule's {words}") and "rerun test.py" in str(err.value)
    path.write_text(json.dumps({"verify_rule": {**rule, "feature_mean": [1e150, 0.0], "cosine_threshold": -1}}))
    assert load_rule(path).threshold == -1.0  # the largest: a squared norm of 1e300 is finite
    for thresholds, shown in (([1e308, 1e308], "inf"), ([4.5, 4.5], "4.5")):
        path.write_text(json.dumps({"protocol": "insightface", "thresholds": thresholds}))
        with pytest.raises(ValueError, match=rf"r\.json: the mean of its fold thresholds, {shown}, is not a squared "
                                             r"distance of unit vectors \(in \[0, 4\]\)"):
            load_rule(path)


def test_pair_cosine_is_exact_for_any_finite_features_and_never_nan():
    """Against the cosine of the same directions at unit scale (8/9, and 4/5 after the mean): features of
    1e200 and a mean of 1e150 gave inf / inf = NaN; non-finite features are an error, not a NaN."""
    a, b, mean = np.array([1.0, 2.0, 2.0]), np.array([2.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    assert pair_cosine(a * 1e200, b * 1e200, None) == pytest.approx(8 / 9, abs=1e-15)
    assert pair_cosine(a * 1e150, b * 1e150, mean * 1e150) == pytest.approx(4 / 5, abs=1e-15)
    assert pair_cosine(a * 1e-200, b * 1e-200, None) == pytest.approx(8 / 9, abs=1e-15)  # no underflow to 0 / 0
    assert pair_cosine(a, a, None) == 1.0 and pair_cosine(a, -a, None) == -1.0  # within [-1, 1] exactly
    for bad in (np.array([1.0, np.nan, 2.0]), np.array([np.inf, 1.0, 2.0])):
        with pytest.raises(ValueError, match="a face's feature holds NaN or inf"):
            pair_cosine(bad, b, None)
    with pytest.raises(ValueError, match="subtracting the stored feature mean overflows"):
        pair_cosine(np.array([1.7e308, 1.0, 1.0]), b, np.array([-1.7e308, 0.0, 0.0]))
