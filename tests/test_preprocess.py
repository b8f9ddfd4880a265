"""The preprocessing command (docs/REPRODUCING.md, "Preprocessing details") on small trees of real image
files: broken files, odd modes, faceless images, fallback, reruns and landmark-file mode."""
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

import preprocess as cli
from conftest import write_lfw_tree
from hostile import one_line_error
from test_face import astronaut_view
from uniformface.align import preprocessing
from uniformface.align.face import FaceDetector, align_face
from uniformface.base.locks import LOCK_FILE
from uniformface.base.images import JPEG_QUALITY, decode_rgb
from uniformface.align.preprocessing import LANDMARKS_NAME, REPORT_NAME, read_landmark_file
from uniformface.eval.pairs import read_pairs


def faceless(seed=0, size=250):
    """Textured but faceless: a smooth random pattern."""
    coarse = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))


def save(pixels, path, **kwargs):
    """Write a numpy array or a PIL image (for modes numpy cannot say, such as CMYK)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)).save(path, **kwargs)
    return path


def run_cli(capsys, *args):
    code = cli.main([*map(str, args), "--no_progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def counts(stdout):
    found = re.search(r"aligned (\d+), fallback (\d+), skipped-no-face (\d+), broken (\d+), already-done (\d+)", stdout)
    assert found, stdout
    return dict(zip(["aligned", "fallback", "no_face", "broken", "already_done"], map(int, found.groups())))


def report(out_dir):
    lines = (out_dir / REPORT_NAME).read_text().splitlines()
    assert lines[0] == "path\tstatus\tdetail"
    return {line.split("\t")[0]: line.split("\t")[1] for line in lines[1:]}


def image_files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.name not in (REPORT_NAME, LANDMARKS_NAME) and p != root / LOCK_FILE)


def written_files(root):
    """{relative path: bytes} of every file a run wrote into `root`: all but the lock file, whose text only
    names the last run that held the folder."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p != root / LOCK_FILE}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def face_tolerance(reference):
    """Mean absolute difference over the face that a 2 px misalignment of `reference` causes."""
    face = (slice(16, 104), slice(12, 84))
    return np.abs(reference[:, 2:][face].astype(float) - reference[:, :-2][face]).mean(), face


def test_training_tree_with_broken_files_and_odd_modes(tmp_path, capsys, detector):
    source, out = tmp_path / "casia", tmp_path / "aligned"
    view = astronaut_view()
    save(view, source / "0000045" / "001.jpg", quality=95)
    save(astronaut_view(angle=12), source / "0000045" / "002.jpg", quality=95)
    save(astronaut_view(scale=1.3), source / "0000099" / "001.jpg", quality=95)
    save(astronaut_view(angle=-8, size=300), source / "0000045" / "003.jpg", quality=95)  # another size
    save(faceless(), source / "0000099" / "002.jpg", quality=95)
    (source / "0000099" / "003.jpg").write_bytes(b"")
    whole = (source / "0000045" / "001.jpg").read_bytes()
    (source / "0000099" / "004.jpg").write_bytes(whole[: len(whole) // 3])
    (source / "0000099" / "005.jpg").write_text("this is not a picture")
    save(Image.fromarray(view).convert("CMYK"), source / "0000123" / "001.jpg", quality=95)
    save(np.dstack([view, np.full(view.shape[:2], 255, np.uint8)]), source / "0000123" / "002.png")
    deep = np.asarray(Image.fromarray(view).convert("L")).astype(np.uint16) * 257
    save(deep, source / "0000123" / "003.png")
    save(np.asarray(Image.fromarray(view).convert("L")), source / "0000123" / "004.jpg", quality=95)
    (source / "0000123" / "notes.txt").write_text("not an image name")

    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", out, "--workers", 2)
    assert code == 0
    assert counts(stdout) == {"aligned": 8, "fallback": 0, "no_face": 1, "broken": 3, "already_done": 0}
    assert re.search(r"detection rate 88\.89% \(8 of 9 decoded images\)", stdout)
    assert report(out) == {"0000099/002.jpg": "no_face", "0000099/003.jpg": "broken", "0000099/004.jpg": "broken",
                           "0000099/005.jpg": "broken", "0000123/notes.txt": "ignored"}
    broken_detail = (out / REPORT_NAME).read_text()
    assert "0000099/003.jpg" in broken_detail and "truncated" in broken_detail

    # the loader workers' own detectors found what this process's detector finds
    logged = read_landmark_file(out / LANDMARKS_NAME)
    assert len(logged) == 8
    for name, points in logged.items():
        assert np.abs(detector.detect(decode_rgb(source / name)) - points).max() <= 0.5, name

    expected = ["0000045/001.jpg", "0000045/002.jpg", "0000045/003.jpg", "0000099/001.jpg", "0000123/001.jpg", "0000123/002.png",
                "0000123/003.png", "0000123/004.jpg"]
    assert image_files(out) == expected  # same relative paths and names, .png stays .png
    with Image.open(out / "0000123" / "002.png") as img:
        assert img.format == "PNG" and img.size == (96, 112) and img.mode == "RGB"

    # the odd modes were decoded properly: their crops match the plain JPEG's to better than 2 px
    plain = np.asarray(Image.open(out / "0000045" / "001.jpg")).astype(float)
    tolerance, face = face_tolerance(plain)
    plain_grey = np.asarray(Image.open(out / "0000045" / "001.jpg").convert("L")).astype(float)
    for name in ("001.jpg", "002.png"):
        crop = np.asarray(Image.open(out / "0000123" / name)).astype(float)
        assert np.abs(crop[face] - plain[face]).mean() < tolerance, name
    for name in ("003.png", "004.jpg"):
        crop = np.asarray(Image.open(out / "0000123" / name).convert("L")).astype(float)
        assert np.abs(crop[face] - plain_grey[face]).mean() < tolerance, name


def lfw_tree(root, extension=".png"):
    """LFW-style names; .png so that outputs can be compared exactly."""
    paths = {
        "Eileen_Collins/Eileen_Collins_0001": astronaut_view(),
        "Eileen_Collins/Eileen_Collins_0002": astronaut_view(angle=-10, scale=1.2),
        "Eileen_Collins/Eileen_Collins_0003": astronaut_view(shift=(15, 10)),
        "Blank_Wall/Blank_Wall_0001": faceless(seed=5),
    }
    return {name + extension: save(pixels, root / (name + extension)) for name, pixels in paths.items()}


def test_test_set_keeps_a_faceless_image_with_the_mean_landmarks_and_reruns_skip(tmp_path, capsys, detector):
    source, out = tmp_path / "lfw", tmp_path / "aligned"
    files = lfw_tree(source)
    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", out, "--workers", 0)
    assert code == 0
    assert counts(stdout) == {"aligned": 3, "fallback": 1, "no_face": 0, "broken": 0, "already_done": 0}
    assert report(out) == {"Blank_Wall/Blank_Wall_0001.png": "fallback"}
    assert image_files(out) == sorted(files)

    # independent: detect the three faces here, average, align the faceless image with that
    faces = [decode_rgb(files[name]) for name in sorted(files) if name.startswith("Eileen")]
    mean = np.mean(detector.detect_batch(faces), axis=0)
    expected = align_face(decode_rgb(files["Blank_Wall/Blank_Wall_0001.png"]), mean)
    got = np.asarray(Image.open(out / "Blank_Wall" / "Blank_Wall_0001.png"))
    assert np.abs(got.astype(int) - expected).max() <= 1
    logged = read_landmark_file(out / LANDMARKS_NAME)
    assert sorted(logged) == sorted(n for n in files if n.startswith("Eileen"))
    np.testing.assert_allclose(np.mean(list(logged.values()), axis=0), mean, atol=0.01)

    # rerun: nothing is redone, the earlier fallback stays in the report, a killed run's leftover goes
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    leftover = out / "Eileen_Collins" / ".Eileen_Collins_0009.png.4242.partial"
    leftover.write_bytes(b"half a file")
    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", out, "--workers", 0)
    assert code == 0 and counts(stdout)["already_done"] == 4 and counts(stdout)["aligned"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps
    assert report(out) == {"Blank_Wall/Blank_Wall_0001.png": "fallback"}
    assert not leftover.exists() and not list(out.rglob("*.partial"))

    # a rerun that must redo the fallback takes the mean from the earlier runs' landmarks.txt
    (out / "Blank_Wall" / "Blank_Wall_0001.png").unlink()
    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", out, "--workers", 0)
    assert counts(stdout) == {"aligned": 0, "fallback": 1, "no_face": 0, "broken": 0, "already_done": 3}
    again = np.asarray(Image.open(out / "Blank_Wall" / "Blank_Wall_0001.png"))
    assert np.abs(again.astype(int) - expected).max() <= 1

    # a training-set policy skips it instead
    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", tmp_path / "skip", "--workers", 0,
                              "--fallback", "skip", "--output_size", "112x112")
    assert counts(stdout)["no_face"] == 1 and not (tmp_path / "skip" / "Blank_Wall").exists()
    assert report(tmp_path / "skip") == {"Blank_Wall/Blank_Wall_0001.png": "no_face"}
    with Image.open(tmp_path / "skip" / "Eileen_Collins" / "Eileen_Collins_0001.png") as img:
        assert img.size == (112, 112)


def test_landmark_file_mode_aligns_with_the_given_points_and_no_detector(tmp_path, capsys, monkeypatch):
    source, out = tmp_path / "lfw", tmp_path / "aligned"
    files = lfw_tree(source)
    given = {
        "Eileen_Collins/Eileen_Collins_0001.png": np.array([[104, 103], [147, 106], [125, 130], [102, 141], [145, 144]], float),
        "Eileen_Collins/Eileen_Collins_0002.png": np.array([[96.5, 110], [138, 105], [117, 128.25], [99, 146], [138, 141]], float),
        "Blank_Wall/Blank_Wall_0001.png": np.array([[90, 100], [150, 100], [120, 135], [95, 160], [145, 160]], float),
    }
    lines = [f"{name}\t" + "\t".join(f"{v:g}" for v in points.ravel()) for name, points in given.items()]
    lines.append("Nobody/Nobody_0001.png\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10")
    (tmp_path / "lfw_landmark.txt").write_text("\n".join(lines) + "\n")

    def no_detector(*args, **kwargs):
        raise AssertionError("the detector must not be built in landmark-file mode")
    monkeypatch.setattr(preprocessing, "FaceDetector", no_detector)

    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", out, "--workers", 0,
                              "--landmarks", tmp_path / "lfw_landmark.txt")
    assert code == 0
    assert counts(stdout) == {"aligned": 3, "fallback": 1, "no_face": 0, "broken": 0, "already_done": 0}
    assert report(out) == {"Nobody/Nobody_0001.png": "missing_file", "Eileen_Collins/Eileen_Collins_0003.png": "fallback"}
    for name, points in given.items():
        got = np.asarray(Image.open(out / name))
        np.testing.assert_array_equal(got, align_face(decode_rgb(files[name]), points))
    # the unlisted image borrowed the mean of the given points of its size
    mean = np.mean(list(given.values()), axis=0)
    got = np.asarray(Image.open(out / "Eileen_Collins" / "Eileen_Collins_0003.png"))
    assert np.abs(got.astype(int) - align_face(decode_rgb(files["Eileen_Collins/Eileen_Collins_0003.png"]), mean)).max() <= 1


def test_an_image_that_crashes_the_detector_is_reported_and_the_rest_aligned(tmp_path, capsys, monkeypatch):
    source, out = tmp_path / "set", tmp_path / "out"
    save(astronaut_view(), source / "A" / "1.png")
    save(astronaut_view(angle=5), source / "A" / "2.png")
    save(np.zeros((250, 250, 3), np.uint8), source / "A" / "3.png")  # the "crashing" one
    real = FaceDetector.detect_batch

    def fragile(self, images):
        if any(not image.any() for image in images):
            raise RuntimeError("simulated MTCNN failure")
        return real(self, images)
    monkeypatch.setattr(FaceDetector, "detect_batch", fragile)
    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", out, "--workers", 0)
    assert code == 0 and counts(stdout)["aligned"] == 2 and counts(stdout)["broken"] == 1
    assert report(out) == {"A/3.png": "broken"}
    assert "simulated MTCNN failure" in (out / REPORT_NAME).read_text()


def test_malformed_landmark_file_is_an_error_naming_the_line(tmp_path, capsys):
    source = tmp_path / "lfw"
    save(faceless(), source / "A" / "A_0001.jpg")
    (tmp_path / "marks.txt").write_text("A/A_0001.jpg\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10\nA/A_0002.jpg\t1\t2\tthree\n")
    code, _, stderr = run_cli(capsys, "--dataset", source, "--output_dir", tmp_path / "out", "--workers", 0,
                              "--landmarks", tmp_path / "marks.txt")
    assert code == 1 and "marks.txt, line 2" in stderr


def test_an_output_folder_and_its_dataset_never_hold_each_other(tmp_path, capsys):
    """`--dataset OUT/x --output_dir OUT` aligned the input into a tree that then held it
    (train.py would take its folder for an identity) and exited 0. Either way round: one line, status 2, and
    nothing written."""
    save(faceless(), tmp_path / "set" / "A" / "A_0001.jpg")
    code, _, stderr = run_cli(capsys, "--dataset", tmp_path / "set", "--output_dir", tmp_path / "set" / "out")
    assert code == 2 and not (tmp_path / "set" / "out").exists()
    one_line_error(stderr, f"--output_dir {tmp_path / 'set' / 'out'} must not be inside --dataset")
    out = tmp_path / "OUT"
    save(faceless(), out / "x" / "A" / "A_0001.jpg")
    before = written_files(out)
    code, _, stderr = run_cli(capsys, "--dataset", out / "x", "--output_dir", out, "--workers", 0)
    assert code == 2 and written_files(out) == before and not (out / LOCK_FILE).exists()
    one_line_error(stderr, f"--dataset {out / 'x'} is inside --output_dir {out}")
    with pytest.raises(ValueError, match="is inside --output_dir"):  # the library refuses it too
        preprocessing.preprocess(preprocessing.Options(dataset=out / "x", output_dir=out, workers=0, progress=False))


def test_a_run_whose_every_image_is_broken_exits_1(tmp_path, capsys):
    """A dataset of nothing but broken files (an empty JPEG, a cut one, text) exited 0. Its
    rerun, and a set where one image aligns, still succeed."""
    source, marks = tmp_path / "set", tmp_path / "marks.txt"
    good = save(astronaut_view(), source / "A" / "1.jpg", quality=95).read_bytes()
    (source / "A" / "1.jpg").write_bytes(good[: len(good) // 3])
    (source / "A" / "2.jpg").write_bytes(b"")
    (source / "B" ).mkdir()
    (source / "B" / "1.jpg").write_text("not a picture")
    marks.write_text("A/1.jpg\t104\t103\t147\t106\t125\t130\t102\t141\t145\t144\n")
    code, stdout, stderr = run_cli(capsys, "--dataset", source, "--output_dir", tmp_path / "out", "--workers", 0,
                                   "--landmarks", marks)
    assert code == 1 and counts(stdout) == {"aligned": 0, "fallback": 0, "no_face": 0, "broken": 3,
                                            "already_done": 0}
    one_line_error(stderr, f"all 3 image files of {source} are broken", "first: A/1.jpg:", "truncated",
                   str(tmp_path / "out" / REPORT_NAME))
    assert report(tmp_path / "out") == {"A/1.jpg": "broken", "A/2.jpg": "broken", "B/1.jpg": "broken"}

    (source / "A" / "1.jpg").write_bytes(good)  # one image mended: aligned, the other two still broken
    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", tmp_path / "out", "--workers", 0,
                              "--landmarks", marks)
    assert code == 0 and counts(stdout)["aligned"] == 1 and counts(stdout)["broken"] == 2
    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", tmp_path / "out", "--workers", 0,
                              "--landmarks", marks)
    assert code == 0 and counts(stdout)["already_done"] == 1 and counts(stdout)["broken"] == 2  # a rerun: the same


def test_pairs_name_the_test_set_and_only_their_images_fall_back(tmp_path, capsys, monkeypatch):
    """`--pairs` names a test set explicitly: a missed face of an image the pairs need is aligned with the mean
    landmarks, one elsewhere is skipped and reported, and a pair image the dataset lacks is reported; without
    it, the earlier port's LFW command falls back for every miss, as before."""
    from test_datasets import TEMPLATE

    source, pairs_file = write_lfw_tree(tmp_path)
    needed = {path for pair in read_pairs(pairs_file) for path in (pair.left, pair.right)}
    names = sorted(p.relative_to(source).as_posix() for p in source.glob("*/*.jpg"))
    in_pairs = next(name for name in names if name in needed)
    elsewhere = next(name for name in names if name not in needed)
    gone = sorted(needed)[-1]
    (source / gone).unlink()
    marks = tmp_path / "marks.txt"
    marks.write_text("".join(f"{name}\t" + "\t".join(f"{v:.4f}" for v in (TEMPLATE + k / 10).ravel()) + "\n"
                             for k, name in enumerate(names) if name not in (in_pairs, elsewhere, gone)))
    monkeypatch.setattr(preprocessing, "FaceDetector", None)  # landmark-file mode: no detector

    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", tmp_path / "test", "--workers", 0,
                              "--landmarks", marks, "--pairs", pairs_file)
    assert code == 0
    assert stdout.splitlines()[0] == (f"fallback: mean for the {len(needed)} images the pairs of {pairs_file} need, "
                                      f"skip for the others (--pairs)")
    assert counts(stdout) == {"aligned": len(names) - 3, "fallback": 1, "no_face": 1, "broken": 0,
                              "already_done": 0}
    assert "pair images not in the dataset 1" in stdout
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in
            (tmp_path / "test" / REPORT_NAME).read_text().splitlines()[1:]}
    assert {name: status for name, (status, _) in rows.items()} == {in_pairs: "fallback", elsewhere: "no_face",
                                                                    gone: "missing_file"}
    assert rows[elsewhere][1] == f"no landmarks in {marks}; skipped (not an image of {pairs_file})"
    assert (tmp_path / "test" / in_pairs).is_file() and not (tmp_path / "test" / elsewhere).exists()

    # the LFW command as it was (no --pairs): auto sees LFW names and aligns every miss with the mean
    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", tmp_path / "aligned", "--workers", 0,
                              "--landmarks", marks)
    assert code == 0 and stdout.startswith("fallback: mean (--fallback auto:") and counts(stdout)["fallback"] == 2
    assert report(tmp_path / "aligned") == {in_pairs: "fallback", elsewhere: "fallback"}

    # --pairs decides the fallback: a --fallback beside it is a usage error, as a pairs file that is not there
    code, _, stderr = run_cli(capsys, "--dataset", source, "--output_dir", tmp_path / "x", "--pairs", pairs_file,
                              "--fallback", "mean")
    assert code == 2 and "drop --fallback mean" in stderr and not (tmp_path / "x").exists()
    code, _, stderr = run_cli(capsys, "--dataset", source, "--output_dir", tmp_path / "x", "--pairs", tmp_path / "no")
    assert code == 2 and f"--pairs {tmp_path / 'no'}: no such file" in stderr
    pairs_file.write_text(pairs_file.read_text().replace("\t2\n", "\ttwo\n", 1))
    code, _, stderr = run_cli(capsys, "--dataset", source, "--output_dir", tmp_path / "x", "--pairs", pairs_file)
    assert code == 1 and not (tmp_path / "x").exists()
    one_line_error(stderr, f"{pairs_file}:", "is not a positive integer")


def test_landmark_file_crops_are_cp2tform_and_imtransform_of_the_decoded_jpeg(tmp_path, capsys, monkeypatch):
    """`--landmarks` on real JPEGs gives the crop of Matlab's cp2tform + imtransform (the
    float64 transcription in test_face, 1-based sampling) of the decoded photo, up to JPEG rounding: the
    output is a quality-95 JPEG, so it is compared with the reference crop put through the same encoder.
    One image carries the numbers of the LFW row where the two fitting directions disagree most."""
    from test_face import WORST_ROW, reference_warp

    source = tmp_path / "lfw"
    photos = {"Eileen_Collins/Eileen_Collins_0001.jpg": astronaut_view(),
              "Eileen_Collins/Eileen_Collins_0002.jpg": astronaut_view(angle=-10, scale=1.2)}
    given = {"Eileen_Collins/Eileen_Collins_0001.jpg": [103.4, 103.4, 146.5, 106.7, 124, 130.7, 101.5, 142.4, 144.8, 145.2],
             "Eileen_Collins/Eileen_Collins_0002.jpg": WORST_ROW[1]}
    for name, pixels in photos.items():
        save(pixels, source / name, quality=90)
    (tmp_path / "marks.txt").write_text("".join(f"{n}\t" + "\t".join(f"{v:g}" for v in p) + "\n" for n, p in given.items()))
    monkeypatch.setattr(preprocessing, "FaceDetector", None)  # no detector in this mode

    def through_jpeg(pixels):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return np.asarray(Image.open(buffer)).astype(float)

    for size in [(112, 96), (112, 112)]:
        out = tmp_path / f"aligned{size[1]}"
        code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", out, "--workers", 0,
                                  "--landmarks", tmp_path / "marks.txt", "--output_size", f"{size[0]}x{size[1]}")
        assert code == 0 and counts(stdout)["aligned"] == 2
        for name, numbers in given.items():
            decoded = decode_rgb(source / name)
            points = np.array(numbers, float).reshape(5, 2)
            expected = reference_warp(decoded, points, size)
            got = np.asarray(Image.open(out / name)).astype(float)
            assert got.shape == (*size, 3)
            error = np.abs(got - through_jpeg(np.rint(expected).astype(np.uint8)))
            assert error.max() <= 2 and error.mean() < 0.01, (name, size, error.max(), error.mean())
            # the bound can fail: the same crop half a pixel off is far outside it
            off = np.abs(got - through_jpeg(np.rint(reference_warp(decoded, points + 0.5, size)).astype(np.uint8)))
            assert off.max() > 20 and off.mean() > 1, (name, size)
    # and the landmarks file written by this run holds the given numbers (1-based, as SphereFace's)
    logged = read_landmark_file(out / LANDMARKS_NAME)
    for name, numbers in given.items():
        np.testing.assert_allclose(logged[name].ravel(), numbers, atol=1e-9)


def test_a_written_landmarks_file_replays_the_same_crops(tmp_path, capsys):
    """OUT/landmarks.txt (detected landmarks, SphereFace's format and 1-based convention) fed back with
    `--landmarks` gives the same crops as the detector run, including on a reduced large image."""
    source = tmp_path / "set"
    save(astronaut_view(), source / "A" / "1.png")
    save(astronaut_view(angle=8, scale=1.1), source / "A" / "2.png")
    big = Image.fromarray(astronaut_view(angle=-6, size=250)).resize((1900, 1900), Image.Resampling.BICUBIC)
    save(big, source / "B" / "1.png")
    first, second = tmp_path / "detected", tmp_path / "replayed"
    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", first, "--workers", 0)
    assert code == 0 and counts(stdout)["aligned"] == 3
    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", second, "--workers", 0,
                              "--landmarks", first / LANDMARKS_NAME)
    assert code == 0 and counts(stdout)["aligned"] == 3
    for name in ("A/1.png", "A/2.png", "B/1.png"):
        a = np.asarray(Image.open(first / name)).astype(int)
        b = np.asarray(Image.open(second / name)).astype(int)
        assert np.abs(a - b).max() <= 1 and np.mean(a != b) < 0.01, name
    assert (second / LANDMARKS_NAME).read_text() == (first / LANDMARKS_NAME).read_text()


# ------------------------------------------------------------------ hostile inputs (docs/RELIABILITY.md)

def test_symlinked_identity_folders_are_aligned_and_a_loop_is_reported(tmp_path, capsys):
    """Case 6: an identity folder reached through a symlink was skipped silently (train.py follows it)."""
    source, elsewhere, out = tmp_path / "set", tmp_path / "elsewhere", tmp_path / "out"
    save(astronaut_view(), source / "A" / "1.png")
    save(astronaut_view(angle=8), elsewhere / "B" / "1.png")
    (source / "B").symlink_to(elsewhere / "B", target_is_directory=True)      # an identity kept elsewhere
    (source / "A" / "again").symlink_to(source, target_is_directory=True)   # a loop back to the root
    out.mkdir()
    (source / "C").symlink_to(out, target_is_directory=True)                # into the output folder
    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", out, "--workers", 0)
    assert code == 0 and counts(stdout)["aligned"] == 2 and "symlinked folders not followed 2" in stdout
    assert image_files(out) == ["A/1.png", "B/1.png"] and not (out / "B").is_symlink()
    assert report(out) == {"A/again": "not_followed", "C": "not_followed"}
    detail = {line.split("\t")[0]: line.split("\t")[2] for line in (out / REPORT_NAME).read_text().splitlines()}
    assert "loop" in detail["A/again"] and "--output_dir" in detail["C"]


KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {code!r})
from uniformface.align import preprocessing
real, calls = preprocessing.write_image, [0]
def write_then_die(destination, image):  # SIGKILL: no cleanup, no flush, as a real kill
    calls[0] += 1
    if calls[0] == {kill_at} and {before}:
        os.kill(os.getpid(), signal.SIGKILL)
    real(destination, image)
    if calls[0] == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
preprocessing.write_image = write_then_die
import preprocess
sys.exit(preprocess.main({argv!r}))
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A test set and what an uninterrupted run makes of it: three faces (outputs 1-3, in the detection
    pass), then three fallbacks (outputs 4-6): two of one size (the size mean), one of a size no face has
    (the size-relative mean); a broken file and a non-image."""
    root = tmp_path_factory.mktemp("kill")
    source = root / "lfw"
    for i, view in enumerate([astronaut_view(), astronaut_view(angle=-10, scale=1.2), astronaut_view(shift=(15, 10))]):
        save(view, source / "Eileen_Collins" / f"Eileen_Collins_{i + 1:04d}.png")
    save(faceless(1), source / "Blank_Wall" / "Blank_Wall_0001.png")
    save(faceless(2), source / "Blank_Wall" / "Blank_Wall_0002.png")
    save(faceless(3, size=300), source / "Blank_Wall" / "Blank_Wall_0003.png")
    save(faceless(4), source / "Broken" / "Broken_0001.png").write_bytes(b"\x89PNG cut")
    (source / "Broken" / "notes.txt").write_text("not an image")
    args = ["--dataset", str(source), "--workers", "0", "--batch_size", "1", "--no_progress"]
    assert cli.main(args + ["--output_dir", str(root / "whole")]) == 0
    whole = root / "whole"
    assert report(whole) == {"Blank_Wall/Blank_Wall_0001.png": "fallback", "Blank_Wall/Blank_Wall_0002.png": "fallback",
                             "Blank_Wall/Blank_Wall_0003.png": "fallback", "Broken/Broken_0001.png": "broken",
                             "Broken/notes.txt": "ignored"}
    assert "size-relative" in (whole / REPORT_NAME).read_text()
    assert len(read_landmark_file(whole / LANDMARKS_NAME)) == 3
    return args, written_files(whole)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at, before", [(2, False), (5, True)], ids=["detection-phase", "fallback-phase"])
def test_a_killed_run_and_its_rerun_report_what_an_uninterrupted_run_does(tmp_path, capsys, uninterrupted,
                                                                          kill_at, before):
    """Case 7: SIGKILL just after the 2nd output is renamed into place (detection pass), or just before the
    5th is (fallback phase: one fallback done), then a rerun: preprocess_report.tsv, landmarks.txt and
    every output are byte for byte those of an uninterrupted run."""
    import subprocess
    import sys

    args, expected = uninterrupted
    out = tmp_path / "killed"
    script = KILLED_RUN.format(code=str(Path(preprocessing.__file__).parents[1]), kill_at=kill_at, before=before,
                               argv=args + ["--output_dir", str(out)])
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(written) == kill_at - before and not (out / REPORT_NAME).exists()
    assert sum(name.startswith("Blank_Wall") for name in written) == max(0, kill_at - before - 3)

    code, stdout, _ = run_cli(capsys, *args, "--output_dir", out)
    assert code == 0 and counts(stdout)["already_done"] == kill_at - before
    got = written_files(out)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] == expected[name], name


def test_fallback_auto_is_printed_and_one_stray_name_does_not_switch_it(tmp_path, capsys, monkeypatch):
    """Case 11: one file not named as LFW's switched a whole test set to skipping, and silently."""
    source, out = tmp_path / "lfw", tmp_path / "out"
    save(astronaut_view(), source / "Eileen_Collins" / "Eileen_Collins_0001.png")
    save(astronaut_view(angle=5), source / "Eileen_Collins" / "Eileen_Collins_0002.png")
    save(faceless(), source / "Blank_Wall" / "Blank_Wall_0001.png")
    save(astronaut_view(scale=1.1), source / "Eileen_Collins" / "IMG_1234.png")   # the stray name
    marks = tmp_path / "marks.txt"
    marks.write_text("".join(f"Eileen_Collins/{name}\t90\t100\t150\t100\t120\t135\t95\t160\t145\t160\n"
                             for name in ("Eileen_Collins_0001.png", "Eileen_Collins_0002.png", "IMG_1234.png")))
    monkeypatch.setattr(preprocessing, "FaceDetector", None)  # landmark-file mode: no detector
    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", out, "--workers", 0, "--landmarks", marks)
    assert code == 0
    first = stdout.splitlines()[0]
    assert first.startswith("fallback: mean (--fallback auto: 3 of 4 image files are named <dir>/<dir>_NNNN.<ext>")
    assert "more than half" in first and "not so named: Eileen_Collins/IMG_1234.png" in first
    assert report(out) == {"Blank_Wall/Blank_Wall_0001.png": "fallback"}
    # a training set's names: skip, and said so
    code, stdout, _ = run_cli(capsys, "--dataset", source / "Eileen_Collins", "--output_dir", tmp_path / "t",
                              "--workers", 0, "--landmarks", marks, "--fallback", "skip")
    assert stdout.splitlines()[0] == "fallback: skip (--fallback skip)"


def test_min_face_size_and_other_detector_options_are_validated(tmp_path, capsys):
    """Case 11: --min_face_size 0 divided by zero in every image, which was then reported broken, and exit 0."""
    save(astronaut_view(), tmp_path / "set" / "A" / "1.png")
    for option, value, words in [("--min_face_size", "0", "at least 12"), ("--factor", "1.5", "(0, 1)"),
                                 ("--max_megapixels", "-1", "positive"), ("--device", "gpu", "not a device name")]:
        code, _, err = run_cli(capsys, "--dataset", tmp_path / "set", "--output_dir", tmp_path / "out", option, value)
        assert code == 2
        assert f"{option} " in err and words in err, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="--min_face_size 0"):
        preprocessing.preprocess(preprocessing.Options(dataset=tmp_path / "set", output_dir=tmp_path / "o",
                                                       min_face_size=0, workers=0, progress=False))


def test_a_large_genuine_photo_needs_and_gets_a_higher_decompression_bomb_limit(tmp_path, capsys):
    """Case 11: a ~181-megapixel photo (a face in a large grey frame) was reported broken with no way to
    allow it. Its JPEG is cheap to write and, reduced in the DCT, to read."""
    source = tmp_path / "set"
    frame = Image.new("L", (13500, 13400), 120)
    frame.paste(Image.fromarray(data.astronaut()).convert("L").resize((2048, 2048), Image.Resampling.BILINEAR),
                (5700, 5700))
    (source / "A").mkdir(parents=True)
    frame.save(source / "A" / "big.jpg", quality=80)
    del frame
    code, stdout, stderr = run_cli(capsys, "--dataset", source, "--output_dir", tmp_path / "out", "--workers", 0)
    assert code == 1 and counts(stdout)["broken"] == 1  # the only image: every image broken is a failure
    one_line_error(stderr, "all 1 image files", "A/big.jpg", "--max_megapixels")
    detail = (tmp_path / "out" / REPORT_NAME).read_text()
    assert "180900000 pixels" in detail and "--max_megapixels" in detail
    code, stdout, _ = run_cli(capsys, "--dataset", source, "--output_dir", tmp_path / "out2", "--workers", 0,
                              "--max_megapixels", "200")
    assert code == 0 and counts(stdout)["aligned"] == 1 and (tmp_path / "out2" / "A" / "big.jpg").is_file()
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # Pillow's own limit is back as it was


def test_files_in_the_output_folder_this_tool_did_not_write_are_kept(tmp_path, capsys, monkeypatch):
    """Case 8: a preprocess_report.tsv or landmarks.txt that is not ours is not replaced without --overwrite;
    a read-only output folder is one line."""
    from hostile import read_only_folder

    source, out = tmp_path / "set", tmp_path / "out"
    save(faceless(), source / "A" / "A_0001.png")
    (tmp_path / "marks.txt").write_text("A/A_0001.png\t90\t100\t150\t100\t120\t135\t95\t160\t145\t160\n")
    monkeypatch.setattr(preprocessing, "FaceDetector", None)
    args = ["--dataset", source, "--output_dir", out, "--workers", 0, "--landmarks", tmp_path / "marks.txt"]
    out.mkdir()
    for name, content in ((REPORT_NAME, "my notes\n"), (LANDMARKS_NAME, "shopping list\nmilk\n")):
        (out / name).write_text(content)
        code, _, err = run_cli(capsys, *args)
        assert code == 1 and err.count("\n") == 1 and f"{out / name}" in err and "--overwrite" in err, err
        assert (out / name).read_text() == content and not (out / "A" / "A_0001.png").exists()
        code, stdout, _ = run_cli(capsys, *args, "--overwrite")
        assert code == 0 and counts(stdout)["aligned"] == 1
        (out / "A" / "A_0001.png").unlink()
    with read_only_folder(tmp_path / "ro") as ro:
        code, _, err = run_cli(capsys, *args[:2], "--output_dir", ro, *args[4:])
    assert code == 1 and err.startswith("preprocess.py: error: ") and str(ro) in err and "Traceback" not in err, err


HOLD_LOCK = """
import sys
sys.path.insert(0, {code!r})
from uniformface.base.locks import FolderLock
lock = FolderLock({folder!r}).acquire()
print("held", flush=True)
sys.stdin.read()  # until killed
"""


def test_a_second_run_into_a_busy_output_folder_is_refused_and_a_killed_holders_lock_is_not(tmp_path, capsys,
                                                                                            monkeypatch):
    """Two runs into one output folder: the second swept the first one's live temporaries as a killed run's
    leftovers. While another process holds the folder's lock a run is refused at once (before it announces
    anything), naming the holder, and touches no file; once the holder is killed (SIGKILL: the kernel drops
    its lock) a run goes ahead and sweeps the temporaries a killed run left."""
    import subprocess
    import sys

    source, out = tmp_path / "set", tmp_path / "out"
    save(astronaut_view(), source / "A" / "A_0001.png")
    (tmp_path / "marks.txt").write_text("A/A_0001.png\t90\t100\t150\t100\t120\t135\t95\t160\t145\t160\n")
    monkeypatch.setattr(preprocessing, "FaceDetector", None)  # landmark-file mode: no detector
    args = ["--dataset", source, "--output_dir", out, "--workers", 0, "--landmarks", tmp_path / "marks.txt"]
    stale = [out / ".landmarks.txt.0badf00d.partial", out / "A" / ".A_0001.png.1234abcd.partial"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")

    def everything(root):
        return {p.relative_to(root).as_posix(): (p.is_file() and p.read_bytes(), p.stat().st_mtime_ns)
                for p in root.rglob("*")}

    script = HOLD_LOCK.format(code=str(Path(preprocessing.__file__).parents[1]), folder=str(out))
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = everything(out)
        code, stdout, err = run_cli(capsys, *args)
        assert code == 1 and stdout == "" and err.count("\n") == 1, err
        assert err.startswith(f"preprocess.py: error: {out.resolve()} is in use by process {holder.pid} on host "), err
        assert ", since " in err and f"lock file {out.resolve() / LOCK_FILE}" in err and "Traceback" not in err
        assert everything(out) == before
    finally:
        holder.kill()
        holder.wait(timeout=60)

    code, stdout, _ = run_cli(capsys, *args)
    assert code == 0 and counts(stdout)["aligned"] == 1
    assert not any(path.exists() for path in stale)
    # the lock file stays (hidden, it only names the last holder): neither an output nor in the report
    assert (out / LOCK_FILE).is_file() and image_files(out) == ["A/A_0001.png"] and report(out) == {}
