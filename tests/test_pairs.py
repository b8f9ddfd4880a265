"""LFW pairs.txt: strict parsing (file and line in every error), writing, unique and missing images."""
from pathlib import Path

import pytest

from uniformface.eval.pairs import Pair, missing_images, read_pairs, unique_images, write_pairs

SHARED_PAIRS = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw" / "pairs.txt"


def toy_folds(n_folds=3, n=2):
    """(same, different) per fold, names and indices varying with the fold."""
    folds = []
    for k in range(n_folds):
        same = [(f"Person_{k}_{i}", i + 1, i + 2 + k) for i in range(n)]
        different = [(f"Person_{k}_{i}", i + 1, f"Other_{k}_{i}", 10 + i) for i in range(n)]
        folds.append((same, different))
    return folds


def test_write_then_read_round_trip(tmp_path):
    folds = toy_folds(3, 2)
    path = tmp_path / "pairs.txt"
    write_pairs(path, folds)
    lines = path.read_text().splitlines()
    assert lines[0] == "3\t2" and lines[1] == "Person_0_0\t1\t2" and lines[3] == "Person_0_0\t1\tOther_0_0\t10"
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.txt"]        # atomic: no temp file left
    pairs = read_pairs(path, ext=".png")
    expected = []
    for k, (same, different) in enumerate(folds):
        expected += [Pair(f"{a}/{a}_{i:04d}.png", f"{a}/{a}_{j:04d}.png", True, k) for a, i, j in same]
        expected += [Pair(f"{a}/{a}_{i:04d}.png", f"{b}/{b}_{j:04d}.png", False, k) for a, i, b, j in different]
    assert pairs == expected


def test_real_lfw_pairs_file():
    if not SHARED_PAIRS.is_file():
        pytest.skip(f"{SHARED_PAIRS} not present")
    pairs = read_pairs(SHARED_PAIRS)
    assert len(pairs) == 6000
    # an independent plain parse of the same file
    rows = [line.split("\t") for line in SHARED_PAIRS.read_text().splitlines()[1:]]
    for k, (pair, row) in enumerate(zip(pairs, rows)):
        fold, within = divmod(k, 600)
        assert pair.fold == fold and pair.is_same == (within < 300) == (len(row) == 3)
        names = (row[0], row[0]) if len(row) == 3 else (row[0], row[2])
        indices = (row[1], row[2]) if len(row) == 3 else (row[1], row[3])
        assert pair.left == f"{names[0]}/{names[0]}_{int(indices[0]):04d}.jpg"
        assert pair.right == f"{names[1]}/{names[1]}_{int(indices[1]):04d}.jpg"
    for k in range(10):
        in_fold = [p for p in pairs if p.fold == k]
        assert sum(p.is_same for p in in_fold) == 300 and len(in_fold) == 600


def _write_with(tmp_path, line_no, text):
    """A valid 2-fold, n=2 file with line `line_no` (1-based) replaced by `text` (None deletes it)."""
    path = tmp_path / "pairs.txt"
    write_pairs(path, toy_folds(2, 2))
    lines = path.read_text().splitlines()
    if text is None:
        del lines[line_no - 1]
    else:
        lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("line_no, text, line_in_message, phrase", [
    (1, "10\tx", 1, "header"),
    (1, "", 1, "header"),
    (2, "Person_0_0\t1\tOther\t2", 2, "same-person line"),          # 4 fields where 3 are due
    (4, "Person_0_0\t1\t2", 4, "different-person line"),           # 3 fields where 4 are due
    (8, "Person_1_0\t1\tOther", 8, "found 3 field"),
    (7, "Person_1_1\t2\tOther", 7, "not a positive integer"),
    (3, "Person_0_1\tone\t2", 3, "not a positive integer"),
    (5, "Person_0_1\t2\tOther_0_1\t1.5", 5, "not a positive integer"),
    (9, "Person_1_1\t0\tOther_1_1\t3", 9, "not a positive integer"),
    (6, "", 6, "found 0 field"),
    (5, None, 1, "announces 2 fold(s) x 2 same + 2 different = 8 pair lines, but 7"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line_no, text, line_in_message, phrase):
    path = _write_with(tmp_path, line_no, text)
    with pytest.raises(ValueError) as error:
        read_pairs(path)
    message = str(error.value)
    assert f"{path}:{line_in_message}:" in message
    assert phrase in message


@pytest.mark.parametrize("line_no, text", [(1, "2\t" + "9" * 5000), (3, "Person_0_1\t" + "1" * 5000 + "\t2"),
                                           (4, "Person_0_0\t1\tOther_0_0\t1234567890")])
def test_a_number_of_thousands_of_digits_is_one_short_line_naming_the_line(tmp_path, line_no, text):
    """Python's int() refuses over 4,300 digits with a message naming no file; LFW's numbers have at most 4
    digits, and more than 9 are named as the line's fault, in a message that shows the line cut short."""
    path = _write_with(tmp_path, line_no, text)
    with pytest.raises(ValueError) as error:
        read_pairs(path)
    message = str(error.value)
    assert message.startswith(f"{path}:{line_no}: ") and "at most 9 digits" in message
    assert len(message) < 400 and "\n" not in message


def test_extra_line_and_empty_file(tmp_path):
    path = tmp_path / "pairs.txt"
    write_pairs(path, toy_folds(1, 1))
    path.write_text(path.read_text() + "Extra\t1\t2\n\n\n")   # trailing blank lines alone are fine
    with pytest.raises(ValueError, match=r"pairs.txt:1: .* = 2 pair lines, but 3"):
        read_pairs(path)
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty file"):
        read_pairs(path)


def test_single_number_header_is_one_fold(tmp_path):
    path = tmp_path / "pairsDevTest.txt"
    path.write_text("1\nA\t1\t2\nA\t1\tB\t3\n")
    assert read_pairs(path) == [Pair("A/A_0001.jpg", "A/A_0002.jpg", True, 0),
                                Pair("A/A_0001.jpg", "B/B_0003.jpg", False, 0)]


def test_write_pairs_rejects_uneven_folds(tmp_path):
    folds = toy_folds(2, 2)
    folds[1] = (folds[1][0][:1], folds[1][1])
    with pytest.raises(ValueError, match="fold 2 has 1 same and 2 different"):
        write_pairs(tmp_path / "pairs.txt", folds)
    assert not (tmp_path / "pairs.txt").exists()


def test_unique_and_missing_images(tmp_path):
    pairs = [Pair("a/a_0001.jpg", "a/a_0002.jpg", True, 0), Pair("b/b_0001.jpg", "a/a_0001.jpg", False, 0),
             Pair("c/c_0003.jpg", "b/b_0001.jpg", False, 1)]
    assert unique_images(pairs) == ["a/a_0001.jpg", "a/a_0002.jpg", "b/b_0001.jpg", "c/c_0003.jpg"]
    for present in ("a/a_0002.jpg", "b/b_0001.jpg"):
        (tmp_path / present).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / present).write_bytes(b"x")
    (tmp_path / "c" / "c_0003.jpg").mkdir(parents=True)          # a folder is not an image
    assert missing_images(pairs, tmp_path) == ["a/a_0001.jpg", "c/c_0003.jpg"]


def test_utf8_with_or_without_a_byte_order_mark_and_other_encodings_name_the_file(tmp_path):
    """A BOM (Windows editors) was read as part of the header; Latin-1 failed naming no file."""
    path = tmp_path / "pairs.txt"
    text = "1\t1\nJosé_María\t1\t2\nJosé_María\t1\tB\t3\n"
    expected = [Pair("José_María/José_María_0001.jpg", "José_María/José_María_0002.jpg", True, 0),
                Pair("José_María/José_María_0001.jpg", "B/B_0003.jpg", False, 0)]
    path.write_bytes(text.encode("utf-8"))
    assert read_pairs(path) == expected
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert read_pairs(path) == expected
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError) as error:
        read_pairs(path)
    assert str(error.value) == (f"{path}:2: not UTF-8 text (byte 0xe9 at offset 7): save the file as UTF-8")
