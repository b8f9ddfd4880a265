"""preprocessing.py: the LFW naming that decides the automatic fallback, and the landmark-file reader on
the official lfw_landmark.txt. preprocess.py's own tests (aligning trees of real image files) are in
test_preprocess.py."""
from pathlib import Path

import numpy as np
import pytest

from uniformface.preprocessing import looks_like_test_set, read_landmark_file

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_lfw_naming_decides_the_automatic_fallback():
    assert looks_like_test_set(["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Zico/Zico_0003.png"])
    assert not looks_like_test_set(["0000045/001.jpg"])
    assert not looks_like_test_set(["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Zico/Aaron_Eckhart_0002.jpg"])
    assert not looks_like_test_set([])


@pytest.mark.skipif(not (SHARED / "lfw" / "lfw_landmark.txt").exists(), reason="shared lfw_landmark.txt not present")
def test_official_lfw_landmark_file_parses():
    path = SHARED / "lfw" / "lfw_landmark.txt"
    parsed = read_landmark_file(path)
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
    assert len(parsed) == len({row[0] for row in rows})
    first = rows[0]
    np.testing.assert_array_equal(parsed[first[0]].ravel(), [float(v) for v in first[1:]])
    points = np.stack(list(parsed.values()))
    assert points.shape[1:] == (5, 2) and (points >= 0).all() and (points <= 250).all()
    assert np.mean(points[:, 0, 0] < points[:, 1, 0]) > 0.99  # x1 y1 x2 y2 ...: left eye before right eye
