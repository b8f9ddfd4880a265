"""preprocessing.py: the LFW naming that decides the automatic fallback, the landmark-file reader on
the official lfw_landmark.txt, and a rerun's one reading of its own landmarks.txt. preprocess.py's own
tests (aligning trees of real image files) are in test_preprocess.py."""
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniformface.align import preprocessing
from uniformface.align.preprocessing import LANDMARKS_NAME, Options, looks_like_test_set, preprocess, read_landmark_file

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


def test_a_rerun_parses_the_output_landmarks_file_once(tmp_path, monkeypatch):
    """A rerun checks OUT/landmarks.txt as this tool's and keeps its landmarks (for the fallback means and
    the rewrite) from one parse of each line, and the rerun rewrites the same file."""
    source, out = tmp_path / "set", tmp_path / "out"
    for name in ("A/A_0001.png", "A/A_0002.png", "B/B_0001.png"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (250, 250), (120, 90, 60)).save(source / name)
    marks = tmp_path / "marks.txt"
    marks.write_text("".join(f"{name}\t90\t100\t150\t100\t120\t135\t95\t160\t145\t160\n"
                             for name in ("A/A_0001.png", "A/A_0002.png", "B/B_0001.png")))
    monkeypatch.setattr(preprocessing, "FaceDetector", None)  # landmark-file mode: no detector
    options = Options(dataset=source, output_dir=out, workers=0, landmarks=marks, progress=False)
    assert preprocess(options).aligned == 3
    written = (out / LANDMARKS_NAME).read_text()
    own_lines = written.splitlines()
    assert len(own_lines) == 3

    parsed = Counter()
    real = preprocessing.parse_landmark_line

    def counting(line):
        parsed[line.rstrip("\r\n")] += 1
        return real(line)
    monkeypatch.setattr(preprocessing, "parse_landmark_line", counting)
    summary = preprocess(options)
    assert summary.already_done == 3 and summary.aligned == 0
    assert {line: parsed[line] for line in own_lines} == {line: 1 for line in own_lines}
    assert (out / LANDMARKS_NAME).read_text() == written


def test_a_rerun_keeps_the_landmarks_of_a_file_name_with_a_line_separator_character(tmp_path, monkeypatch):
    """Only "\n" ends a line of landmarks.txt: an image named with U+2028 (a legal Linux file name) keeps its
    landmarks on a rerun, and the rerun neither refuses the tool's own file nor rewrites it differently."""
    source, out = tmp_path / "set", tmp_path / "out"
    names = ("A/A\u20280001.png", "A/A_0002.png")
    for name in names:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (250, 250), (120, 90, 60)).save(source / name)
    marks = tmp_path / "marks.txt"
    marks.write_text("".join(f"{name}\t90\t100\t150\t100\t120\t135\t95\t160\t145\t160\n" for name in names),
                     encoding="utf-8")
    monkeypatch.setattr(preprocessing, "FaceDetector", None)  # landmark-file mode: no detector
    options = Options(dataset=source, output_dir=out, workers=0, landmarks=marks, progress=False)
    assert preprocess(options).aligned == 2
    written = (out / LANDMARKS_NAME).read_text(encoding="utf-8")
    assert written.count("\n") == 2 and names[0] in written
    kept = preprocessing.check_own_files(out / "preprocess_report.tsv", out / LANDMARKS_NAME)
    assert sorted(kept) == sorted(names)
    summary = preprocess(options)
    assert summary.already_done == 2 and summary.aligned == 0
    assert (out / LANDMARKS_NAME).read_text(encoding="utf-8") == written


def test_a_landmarks_file_that_is_not_ours_is_named_with_the_line_an_editor_shows(tmp_path):
    """Blank lines count: the refusal names the line as an editor numbers it. A malformed last line is one a
    killed run may have cut (kept out, no refusal), and --overwrite refuses nothing, not even a file that is
    not UTF-8 (its well-formed lines are kept, as from any file it replaces)."""
    good = "A/A_0001.png\t90\t100\t150\t100\t120\t135\t95\t160\t145\t160\n"
    marks = tmp_path / LANDMARKS_NAME
    marks.write_text(good + "\n\n" + "milk\n" + good.replace("A_0001", "A_0002"))
    with pytest.raises(FileExistsError, match=r"landmarks\.txt, line 4: not a landmarks file"):
        preprocessing.check_own_files(tmp_path / "report.tsv", marks)
    assert sorted(preprocessing.check_own_files(tmp_path / "report.tsv", marks, overwrite=True)) == [
        "A/A_0001.png", "A/A_0002.png"]
    marks.write_text(good + "\n" + "A/A_0002.png\t90\t10")
    assert sorted(preprocessing.check_own_files(tmp_path / "report.tsv", marks)) == ["A/A_0001.png"]
    marks.write_bytes(good.encode() + b"\xff\xfe notes\n" + good.encode())  # not ours, and not UTF-8
    with pytest.raises(FileExistsError, match=r"landmarks\.txt, line 2: not a landmarks file"):
        preprocessing.check_own_files(tmp_path / "report.tsv", marks)
    assert sorted(preprocessing.check_own_files(tmp_path / "report.tsv", marks, overwrite=True)) == ["A/A_0001.png"]
    marks.write_bytes(good.encode() + good.replace("A_0001", "\udcff").encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError, match=r"landmarks\.txt:2: not UTF-8 text"):  # well-formed, but not UTF-8
        preprocessing.check_own_files(tmp_path / "report.tsv", marks)
    assert sorted(preprocessing.check_own_files(tmp_path / "report.tsv", marks, overwrite=True)) == [
        "A/A_0001.png", "A/\ufffd.png"]
