"""The toy face set: deterministic, in LFW's layout and pairs format, detectable by the real MTCNN, and with
identity that colour does not give away."""
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uniformface.tools import toydata
from uniformface.tools.toydata import ToySettings, generate

TINY = dataclasses.replace(ToySettings(), train_identities=3, images_per_identity=2, lfw_identities=4,
                           lfw_images_min=3, lfw_images_max=4, folds=2, pairs_per_fold=3)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "a"
    summary = generate(root, seed=3, settings=TINY, progress=False)
    return root, summary


def test_same_seed_gives_identical_bytes_whatever_the_workers(tiny_set, tmp_path):
    root, _ = tiny_set
    again = tmp_path / "b"
    generate(again, seed=3, settings=TINY, progress=False, workers=2)
    first, second = tree_bytes(root), tree_bytes(again)
    assert sorted(first) == sorted(second)
    assert all(first[k] == second[k] for k in first), [k for k in first if first[k] != second[k]]


def test_another_seed_gives_other_images_and_pairs(tiny_set, tmp_path):
    root, _ = tiny_set
    other = tmp_path / "c"
    generate(other, seed=4, settings=TINY, progress=False)
    first, second = tree_bytes(root), tree_bytes(other)
    images = [k for k in first if k.endswith(".jpg") and k in second]
    assert images
    assert all(first[k] != second[k] for k in images)
    assert first["pairs.txt"] != second["pairs.txt"]


def read_pairs_independently(path: Path):
    """LFW View 2 format, parsed here without the project's reader."""
    lines = path.read_text().split("\n")
    assert lines[-1] == "" and lines[-2] != "", "one newline at the end, no blank lines"
    lines = lines[:-1]
    header = lines[0].split("\t")
    assert len(header) == 2, lines[0]
    n_folds, n = int(header[0]), int(header[1])
    assert len(lines) == 1 + n_folds * 2 * n
    folds = []
    for f in range(n_folds):
        block = [line.split("\t") for line in lines[1 + f * 2 * n: 1 + (f + 1) * 2 * n]]
        same, different = block[:n], block[n:]
        assert all(len(row) == 3 for row in same), f"fold {f}: same block"
        assert all(len(row) == 4 for row in different), f"fold {f}: different block"
        folds.append(([(a, int(i), int(j)) for a, i, j in same], [(a, int(i), b, int(j)) for a, i, b, j in different]))
    return n_folds, n, folds


def test_layout_and_pairs_file(tiny_set):
    root, summary = tiny_set
    train_ids = sorted(p.name for p in (root / "train").iterdir())
    lfw_ids = sorted(p.name for p in (root / "lfw").iterdir())
    assert train_ids == [f"{k:07d}" for k in range(1, TINY.train_identities + 1)]
    assert len(lfw_ids) == TINY.lfw_identities and not set(train_ids) & set(lfw_ids)
    for ident in train_ids:
        files = sorted(p.name for p in (root / "train" / ident).iterdir())
        assert files == [f"{k:03d}.jpg" for k in range(1, TINY.images_per_identity + 1)]
    for name in lfw_ids:
        assert re.fullmatch(r"Toy_Person_\d{3}", name)
        files = sorted(p.name for p in (root / "lfw" / name).iterdir())
        assert TINY.lfw_images_min <= len(files) <= TINY.lfw_images_max
        assert files == [f"{name}_{k:04d}.jpg" for k in range(1, len(files) + 1)]
    for path in list((root / "train").rglob("*.jpg"))[:3] + list((root / "lfw").rglob("*.jpg"))[:3]:
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.size == (250, 250) and img.mode == "RGB"
    assert not list(root.rglob("*.tmp")), "temporary files left behind"

    n_folds, n, folds = read_pairs_independently(root / "pairs.txt")
    assert (n_folds, n) == (TINY.folds, TINY.pairs_per_fold)
    seen = set()
    people_of_fold = []
    for same, different in folds:
        people = set()
        for name, i, j in same:
            assert 1 <= i < j, (name, i, j)
            key = (name, i, name, j)
            assert key not in seen, f"pair repeated: {key}"
            seen.add(key)
            people.add(name)
        for a, i, b, j in different:
            assert a != b
            key = min((a, i, b, j), (b, j, a, i))
            assert key not in seen, f"pair repeated: {key}"
            seen.add(key)
            people |= {a, b}
        people_of_fold.append(people)
    for a in range(len(folds)):  # LFW's folds hold disjoint people
        for b in range(a + 1, len(folds)):
            assert not people_of_fold[a] & people_of_fold[b]
    referenced = {(a, i) for a, i, _, _ in seen} | {(b, j) for _, _, b, j in seen}
    for name, index in referenced:
        assert (root / "lfw" / name / f"{name}_{index:04d}.jpg").is_file(), (name, index)
    assert set(summary.landmarks) == {str(p.relative_to(root)) for p in root.rglob("*.jpg")}


def test_pairs_file_reads_with_the_project_reader(tiny_set):
    from uniformface.eval.pairs import missing_images, read_pairs

    root, _ = tiny_set
    pairs = read_pairs(root / "pairs.txt")
    assert len(pairs) == 2 * TINY.folds * TINY.pairs_per_fold
    assert missing_images(pairs, root / "lfw") == []


def test_pairs_refuses_folds_it_cannot_fill():
    counts = {f"P{k}": 2 for k in range(4)}  # two people a fold with one same pair each: 2 pairs a fold at most
    assert len(toydata.make_pairs(np.random.default_rng(0), counts, folds=2, per_fold=2)[0][0]) == 2
    with pytest.raises(ValueError, match="fold 1: .* only 2 distinct same-person pairs"):
        toydata.make_pairs(np.random.default_rng(0), counts, folds=2, per_fold=3)


def test_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(FileExistsError, match="toy_manifest.json"):
        generate(tmp_path, seed=0, settings=TINY, progress=False)


def test_regenerating_keeps_a_valid_aligned_copy_and_drops_a_stale_one(tmp_path):
    generate(tmp_path, seed=0, settings=TINY, progress=False)
    (tmp_path / "processed" / "lfw").mkdir(parents=True)  # an aligned copy, as the demo makes
    generate(tmp_path, seed=0, settings=TINY, progress=False)
    assert (tmp_path / "processed" / "lfw").is_dir(), "the same set again: its aligned copy is still valid"
    smaller = dataclasses.replace(TINY, train_identities=2)
    generate(tmp_path, seed=0, settings=smaller, progress=False)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["0000001", "0000002"]
    assert not (tmp_path / "processed").exists(), "a stale aligned copy would mix two sets"


def test_a_run_cut_short_can_be_rerun(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(toydata, "write_pairs", crash)  # dies after the images, before pairs.txt
        with pytest.raises(KeyboardInterrupt):
            generate(tmp_path, seed=0, settings=TINY, progress=False)
    assert (tmp_path / "train").is_dir() and not (tmp_path / "pairs.txt").exists()
    generate(tmp_path, seed=0, settings=TINY, progress=False)
    assert (tmp_path / "pairs.txt").is_file()


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_official_mtcnn_finds_the_faces_and_their_landmarks(tmp_path, detector):
    """The real detector with the real weights, SphereFace's settings: >= 90 % found, landmarks where
    the generator put them (mean error under 10 % of the eye distance)."""
    settings = dataclasses.replace(TINY, train_identities=12, images_per_identity=2, lfw_identities=8,
                                   lfw_images_min=3, lfw_images_max=3, folds=2, pairs_per_fold=2)
    summary = generate(tmp_path, seed=11, settings=settings, progress=False)
    assert (detector.min_face_size, detector.mtcnn.thresholds, detector.mtcnn.factor) == (20, [0.6, 0.7, 0.9], 0.85)
    check = toydata.detection_check(summary, n_images=48, seed=0, detector=detector)
    assert check.total == 48
    assert check.rate >= 0.9, f"MTCNN found {check.found}/{check.total}"
    assert check.median_error < 0.1 * check.eye_distance, check


def mean_colour_identity_accuracy(summary, root):
    """Leave-one-out 1-nearest-neighbour identity accuracy from each training image's mean colour inside
    the face (a 60x60 box around its true landmarks), and the chance level for a guesser that knows which
    source photograph a person was made from (mean colour easily gives that away) but nothing else."""
    names, colours = [], []
    for rel, points in summary.landmarks.items():
        if not rel.startswith("train/"):
            continue
        with Image.open(root / rel) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
        cx, cy = points.mean(0).round().astype(int)
        colours.append(pixels[cy - 30:cy + 30, cx - 30:cx + 30].reshape(-1, 3).mean(0))
        names.append(rel.split("/")[1])
    colours = np.array(colours)
    distance = ((colours[:, None] - colours[None]) ** 2).sum(-1)
    np.fill_diagonal(distance, np.inf)
    nearest = distance.argmin(1)
    return float(np.mean([names[i] == names[k] for i, k in enumerate(nearest)]))


@pytest.mark.slow
def test_mean_colour_does_not_identify_people(tmp_path):
    """A test that can fail: with per-image colour and lighting switched off and a strong per-person skin
    tone (the failure this guards against: tint carrying identity), the same measure finds people."""
    sizes = dict(train_identities=12, images_per_identity=5, lfw_identities=4, lfw_images_min=2,
                 lfw_images_max=2, folds=2, pairs_per_fold=1)
    honest = generate(tmp_path / "honest", seed=5, settings=dataclasses.replace(TINY, **sizes), progress=False)
    tinted = dataclasses.replace(TINY, **sizes, skin_tone_std=0.25, color_cast_std=0.0, light_strength=(0.0, 0.0),
                                 gamma_range=(1.0, 1.0), contrast_range=(1.0, 1.0), brightness_std=0.0,
                                 greyscale_probability=0.0)
    leaky = generate(tmp_path / "leaky", seed=5, settings=tinted, progress=False)
    # Chance for the nearest neighbour to be the same person among 12 x 5 images: 4/59 = 0.07; knowing the
    # source photograph (2 of them) raises it to about 4/29 = 0.14.
    honest_accuracy = mean_colour_identity_accuracy(honest, tmp_path / "honest")
    leaky_accuracy = mean_colour_identity_accuracy(leaky, tmp_path / "leaky")
    assert leaky_accuracy > 0.6, f"the measure should catch a tint that carries identity ({leaky_accuracy:.2f})"
    assert honest_accuracy < 0.3, f"mean face colour identifies people: 1-NN accuracy {honest_accuracy:.2f}"


def raw_and_gradient_auc(summary, root):
    """Same/different ROC AUC over all training-image pairs (aligned with the true landmarks) of two
    hand-made representations, scored like the sphereface protocol (centred, cosine): raw pixels
    (x - 127.5) / 128, and HOG, a gradient-orientation feature that ignores slow lighting changes."""
    from skimage.feature import hog

    from uniformface.align.face import align_face

    names, raw, gradient = [], [], []
    for rel, points in summary.landmarks.items():
        if rel.startswith("train/"):
            with Image.open(root / rel) as img:
                face = align_face(np.asarray(img.convert("RGB")), points).astype(np.float64)
            raw.append(((face - 127.5) / 128).ravel())
            gradient.append(hog(face.mean(2), orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2)))
            names.append(rel.split("/")[1])
    names = np.array(names)
    upper = np.triu_indices(len(names), 1)
    same = (names[:, None] == names[None])[upper]
    aucs = []
    for features in (np.array(raw), np.array(gradient)):
        features = features - features.mean(0)
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        scores = (features @ features.T)[upper]
        positive, negative = scores[same], scores[~same]
        aucs.append(float((positive[:, None] > negative[None]).mean()))
    return aucs


@pytest.mark.slow
def test_raw_pixels_separate_people_poorly_while_identity_stays_in_the_face(tmp_path):
    """Raw pixels must be a weak baseline (lighting, colour and background vary per image) while a
    lighting-insensitive edge feature still tells people apart (identity is learnable, in the face).
    The control, per-image photometric changes switched off, shows the raw measure can fail the bar."""
    sizes = dict(train_identities=10, images_per_identity=5, lfw_identities=4, lfw_images_min=2,
                 lfw_images_max=2, folds=2, pairs_per_fold=1)
    honest = generate(tmp_path / "honest", seed=1, settings=dataclasses.replace(TINY, **sizes), progress=False)
    flat = dataclasses.replace(TINY, **sizes, color_cast_std=0.0, light_strength=(0.0, 0.0), gamma_range=(1.0, 1.0),
                               contrast_range=(1.0, 1.0), brightness_std=0.0, greyscale_probability=0.0)
    unlit = generate(tmp_path / "unlit", seed=1, settings=flat, progress=False)
    raw_auc, gradient_auc = raw_and_gradient_auc(honest, tmp_path / "honest")
    control_raw_auc, _ = raw_and_gradient_auc(unlit, tmp_path / "unlit")
    assert control_raw_auc > 0.93, f"without photometric nuisance raw pixels should find people ({control_raw_auc:.3f})"
    assert raw_auc < 0.9, f"raw pixels separate toy people too well: AUC {raw_auc:.3f}"
    assert gradient_auc > raw_auc + 0.1, f"identity not visible in face structure: HOG AUC {gradient_auc:.3f}"
