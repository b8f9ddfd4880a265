"""IJB-B / IJB-C 1:1: insightface's three meta files read strictly (a malformed line names file and line),
crops aligned from their 0-based landmarks with the project's crop, template features and TAR at FAR equal
to an independent float64 implementation written from the protocol, detector-score weighting, missing
crops, and the feature cache (reused, invalidated, resumed after a kill)."""
import re

import numpy as np
import pytest
from PIL import Image

from conftest import TinyEmbedder, tiny_feature64

from uniformface.eval import ijb
from uniformface.align.crop import template
from uniformface.eval.ijb import (FAR_TARGETS, NO_FEATURE_SCORE, evaluate_ijb, read_landmarks_scores,
                                  read_template_media, read_template_pairs)
from uniformface.eval.trained_network import raw_pixel_embedder

LOOSE = (136, 132)   # loose crop (rows, cols), larger than any aligned crop


def reference_image_feature(crop, w64):
    """f(img) + f(flip(img)) in float64 from the pixels of the expected crop."""
    return tiny_feature64(crop, w64) + tiny_feature64(crop[:, ::-1], w64)


def reference_tar_at_far(scores, genuine, far):
    """Written from the definition: over every threshold t (each score, and above all), accept score >= t;
    the largest true-accept rate among the thresholds whose false-accept rate is at most `far`."""
    best = 0.0
    for t in np.append(np.unique(scores), np.inf):
        if (scores[~genuine] >= t).mean() <= far:
            best = max(best, (scores[genuine] >= t).mean())
    return best


def write_ijb(root, name="ijbc", seed=0):
    """Loose crops whose face (a 112x112 patch) sits at a different offset in each, landmarks written 0-based
    as insightface's meta files hold them, templates made of media of one or more images, and every pair of
    templates as a pair. Returns what the test needs to know."""
    rng = np.random.default_rng(seed)
    crops, meta = root / "loose_crop", root / "meta"
    crops.mkdir(parents=True)
    meta.mkdir()
    subjects = [rng.integers(0, 256, size=(112, 112, 3)) for _ in range(3)]
    # template -> subject, media with their number of images
    layout = {1: (0, {10: 1, 11: 2}), 2: (0, {12: 3}), 3: (1, {13: 1}), 4: (1, {14: 2, 15: 1, 16: 1}),
              5: (2, {17: 2}), 6: (2, {18: 1, 19: 1}), 7: (1, {20: 1})}
    images, tid_mid, points = {}, [], []
    k = 0
    for tid, (subject, media) in layout.items():
        for mid, count in media.items():
            for _ in range(count):
                k += 1
                image_name = f"{k}.jpg" if k % 2 else f"{k}.png"
                dy, dx = int(rng.integers(0, LOOSE[0] - 112)), int(rng.integers(8, LOOSE[1] - 112))
                loose = rng.integers(0, 256, size=(*LOOSE, 3)).astype(np.uint8)
                # part person, part this photo: genuine and impostor scores overlap
                face = 0.4 * subjects[subject] + 0.6 * rng.integers(0, 256, size=(112, 112, 3))
                face = np.clip(face + rng.normal(0, 30, face.shape), 0, 255).astype(np.uint8)
                loose[dy:dy + 112, dx - 8:dx + 104] = face          # the 112x112 crop around the 112x96 one
                path = crops / image_name
                Image.fromarray(loose).save(path.with_suffix(".png"))
                if path.suffix == ".jpg":                       # lossless content under a .jpg name
                    path.with_suffix(".png").rename(path)
                landmarks0 = template((112, 96)) - 1 + [dx, dy]
                score = round(float(rng.uniform(0.3, 1.0)), 4)
                images[image_name] = dict(pixels=loose, offset=(dy, dx), score=score)
                tid_mid.append(f"{image_name} {tid} {mid}")
                points.append(f"{image_name} " + " ".join(f"{v:.6f}" for v in landmarks0.ravel()) + f" {score}")
    pairs = [(a, b, int(layout[a][0] == layout[b][0])) for a in layout for b in layout if a < b]
    (meta / f"{name}_face_tid_mid.txt").write_text("\n".join(tid_mid) + "\n")
    (meta / f"{name}_template_pair_label.txt").write_text("".join(f"{a} {b} {c}\n" for a, b, c in pairs))
    (meta / f"{name}_name_5pts_score.txt").write_text("\n".join(reversed(points)) + "\n")  # any order: joined by name
    return crops, meta, dict(images=images, tid_mid=tid_mid, pairs=pairs)


@pytest.fixture
def ijb_set(tmp_path):
    return write_ijb(tmp_path / "IJBC")


def reference(known, w64, crop=(112, 96), weighted=False, missing=(), feature=None):
    """Template features and pair scores written out: per media the mean of its images' (weighted)
    features, per template the sum over media, normalised; cosine. `feature(crop pixels)` is f + f_flip
    (by default the tiny embedder's, from `w64`)."""
    feature = feature or (lambda patch: reference_image_feature(patch, w64[crop]))
    feats = {}
    for name, image in known["images"].items():
        if name in missing:
            continue
        dy, dx = image["offset"]
        left = dx - (8 if crop[1] == 112 else 0)   # the 112x112 template is the 112x96 one shifted by +8 in x
        patch = image["pixels"][dy:dy + 112, left:left + crop[1]]
        feats[name] = feature(patch) * (image["score"] if weighted else 1.0)
    media = {}
    for line in known["tid_mid"]:
        name, tid, mid = line.split()
        if name in feats:
            media.setdefault(int(tid), {}).setdefault(int(mid), []).append(feats[name])
    templates = {}
    for tid, by_media in media.items():
        total = sum(np.mean(group, axis=0) for group in by_media.values())
        templates[tid] = total / np.linalg.norm(total)
    scores = np.array([templates[a] @ templates[b] if a in templates and b in templates else NO_FEATURE_SCORE
                       for a, b, _ in known["pairs"]])
    return scores, np.array([c == 1 for *_, c in known["pairs"]])


def check_against_reference(result, scores, genuine):
    for far in FAR_TARGETS:
        key = "tar_at_far_" + f"{far:.0e}".replace("e-0", "e-")
        assert result[key] == pytest.approx(reference_tar_at_far(scores, genuine, far), abs=1e-12), far
    # AUC: the probability that a genuine pair outscores an impostor pair (ties half)
    g, i = scores[genuine][:, None], scores[~genuine][None, :]
    assert result["auc"] == pytest.approx(((g > i) + 0.5 * (g == i)).mean(), abs=1e-9)


# ---------------------------------------------------------------------------------------------- protocol

@pytest.fixture
def seen_scores(monkeypatch):
    """The pair scores evaluate_ijb hands to the ROC, caught on their way."""
    caught = []

    def spy(scores, labels):
        caught.append((np.array(scores), np.array(labels)))
        return original(scores, labels)

    original = ijb.roc_points
    monkeypatch.setattr(ijb, "roc_points", spy)
    return caught


@pytest.mark.parametrize("weighted", [False, True])
def test_tar_at_far_equals_the_float64_reference(ijb_set, weighted, seen_scores):
    crops, meta, known = ijb_set
    embed = TinyEmbedder()
    result = evaluate_ijb(embed, crops, meta, "ijbc", detector_score=weighted, batch_size=5, num_workers=0,
                          progress=False)
    scores, genuine = reference(known, embed.w64, weighted=weighted)
    np.testing.assert_allclose(seen_scores[0][0], scores, atol=2e-5)   # float32 network and features
    assert (seen_scores[0][1] == genuine).all()
    assert result["n_pairs"] == 21 and result["n_templates"] == 7 and result["n_images"] == 16
    assert result["n_genuine"] == int(genuine.sum()) and result["detector_score_weighting"] is weighted
    assert embed.images == 2 * 16                                 # every crop with its mirror, once
    check_against_reference(result, scores, genuine)
    assert result["crop"] == "112x96" and result["set"] == "IJB-C"


def test_scores_equal_the_reference_and_the_weighting_changes_them(ijb_set):
    crops, meta, known = ijb_set
    embed = TinyEmbedder()
    names, tids, mids = read_template_media(meta / "ijbc_face_tid_mid.txt")
    points = read_landmarks_scores(meta / "ijbc_name_5pts_score.txt")
    first, second, labels = read_template_pairs(meta / "ijbc_template_pair_label.txt")
    dataset = ijb.AlignedCrops(crops, names, np.stack([points[n][0] for n in names]) + 1)
    features = ijb.image_features(embed, dataset, 4, 0, "cpu")
    for weighted in (False, True):
        weights = np.array([points[n][1] for n in names]) if weighted else None
        ids, feats = ijb.template_features(features, np.arange(len(names)), tids, mids, weights, block=3)
        scores = ijb.pair_cosines(ids, feats, first, second, block=4)
        expected, genuine = reference(known, embed.w64, weighted=weighted)
        np.testing.assert_allclose(scores, expected, atol=2e-5)   # float32 network and features
        assert list(ids) == [1, 2, 3, 4, 5, 6, 7] and (labels == genuine).all()
    unweighted = ijb.pair_cosines(*ijb.template_features(features, np.arange(len(names)), tids, mids), first, second)
    assert np.abs(unweighted - scores).max() > 1e-3          # the scores do weigh in


def test_a_112x112_network_gets_the_widened_crop(ijb_set, seen_scores):
    crops, meta, known = ijb_set
    embed = TinyEmbedder()
    result = evaluate_ijb(embed, crops, meta, "ijbc", input_size=(112, 112), num_workers=0, progress=False)
    scores, genuine = reference(known, embed.w64, crop=(112, 112))
    np.testing.assert_allclose(seen_scores[0][0], scores, atol=2e-5)
    check_against_reference(result, scores, genuine)
    assert result["crop"] == "112x112"


def test_a_missing_crop_is_an_error_unless_allowed(ijb_set, seen_scores):
    crops, meta, known = ijb_set
    gone = ["3.jpg", "7.jpg", "12.png"]   # 7.jpg is template 3's only image
    for name in gone:
        (crops / name).unlink()
    with pytest.raises(FileNotFoundError, match=r"3 image\(s\) of the meta files missing under .*: 12.png, 3.jpg, "
                                                r"7.jpg \(pass --allow_missing"):
        evaluate_ijb(TinyEmbedder(), crops, meta, "ijbc", num_workers=0, progress=False)
    embed = TinyEmbedder()
    result = evaluate_ijb(embed, crops, meta, "ijbc", allow_missing=True, num_workers=0, progress=False)
    scores, genuine = reference(known, embed.w64, missing=gone)
    assert result["n_missing_images"] == 3 and result["missing_images"] == ["12.png", "3.jpg", "7.jpg"]
    assert result["n_pairs_without_features"] == (scores == NO_FEATURE_SCORE).sum() == 6
    np.testing.assert_allclose(seen_scores[0][0], scores, atol=2e-5)
    check_against_reference(result, scores, genuine)


def test_tar_at_far_takes_the_best_rate_not_above_the_target():
    fpr = np.array([0, 0, 1e-6, 1e-4, 0.1, 0.5, 1])
    tpr = np.array([0, 0.2, 0.3, 0.6, 0.8, 0.9, 1])
    assert ijb.tar_at_far(fpr, tpr) == {"tar_at_far_1e-6": 0.3, "tar_at_far_1e-5": 0.3, "tar_at_far_1e-4": 0.6,
                                        "tar_at_far_1e-3": 0.6, "tar_at_far_1e-2": 0.6, "tar_at_far_1e-1": 0.8}


# ------------------------------------------------------------------------------------------ meta formats

def test_the_meta_files_in_their_published_format(ijb_set, tmp_path):
    _, meta, known = ijb_set
    names, tids, mids = read_template_media(meta / "ijbc_face_tid_mid.txt")
    assert [f"{n} {t} {m}" for n, t, m in zip(names, tids, mids)] == known["tid_mid"]
    first, second, labels = read_template_pairs(meta / "ijbc_template_pair_label.txt")
    assert list(zip(first, second, labels.astype(int))) == known["pairs"]
    points = read_landmarks_scores(meta / "ijbc_name_5pts_score.txt")
    image = known["images"]["1.jpg"]
    dy, dx = image["offset"]
    np.testing.assert_allclose(points["1.jpg"][0], template((112, 96)) - 1 + [dx, dy], atol=1e-6)
    assert points["1.jpg"][1] == image["score"]
    # CRLF, blank lines, a byte-order mark, tabs, a form feed: the same pairs, by the fast parse or (the form
    # feed, which only str.split takes for a space) the line by line one
    text = "".join(f"{a} {b} {c}\r\n" for a, b, c in known["pairs"])
    for variant in ("\ufeff" + text + "\r\n", text.replace("\r\n", "\n\n"), text.replace(" ", "\t", 1),
                    "  " + text, text.rstrip(), text.replace(" ", "\f", 1)):
        path = tmp_path / "p.txt"
        path.write_text(variant, newline="")
        got = read_template_pairs(path)
        assert [list(v) for v in got] == [list(first), list(second), list(labels)], repr(variant[:20])


@pytest.mark.parametrize("which, line, problem", [
    ("face_tid_mid", "1.jpg 1", "expected 'image template_id media_id' (3 fields), found 2"),
    ("face_tid_mid", "1.jpg one 10", "template id 'one' is not a non-negative integer"),
    ("face_tid_mid", "1.jpg 1 -10", "media id '-10' is not a non-negative integer"),
    ("face_tid_mid", "../1.jpg 1 10", "image name '../1.jpg' is not a path inside the crop folder"),
    ("template_pair_label", "1 2", "expected 'template_id_1 template_id_2 label' (3 fields), found 2"),
    ("template_pair_label", "1 2 2", "label '2' is not 0 (impostor) or 1 (genuine)"),
    ("template_pair_label", "1 2.0 1", "template id '2.0' is not a non-negative integer"),
    ("template_pair_label", "1 99 1", "the second template 99 has no image in ijbc_face_tid_mid.txt"),
    ("name_5pts_score", "1.jpg 1 2 3 4 5 6 7 8 9 0.9", "expected 'image x1 y1 ... x5 y5 score' (12 fields), found 11"),
    ("name_5pts_score", "1.jpg 1 2 3 4 5 6 7 8 9 nan 0.9", "the landmarks and score must be finite numbers"),
    ("name_5pts_score", "1.jpg 1 2 3 4 5 6 7 8 9 x 0.9", "the landmarks and score must be finite numbers"),
    ("name_5pts_score", "16.png 1 2 3 4 5 6 7 8 9 10 0.9", "image 16.png is listed again with other landmarks"),
])
def test_a_malformed_meta_line_is_named(ijb_set, which, line, problem):
    crops, meta, _ = ijb_set
    path = meta / f"ijbc_{which}.txt"
    lines = path.read_text().splitlines()
    lines.insert(2, line)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:3: {re.escape(problem)}"):
        evaluate_ijb(TinyEmbedder(), crops, meta, "ijbc", num_workers=0, progress=False)


def test_missing_meta_files_and_images_without_landmarks_are_named(ijb_set):
    crops, meta, _ = ijb_set
    path = meta / "ijbc_name_5pts_score.txt"
    path.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith("5.jpg ")) + "\n")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: no landmarks for 1 image.* of "
                                         "ijbc_face_tid_mid.txt: 5.jpg$"):
        evaluate_ijb(TinyEmbedder(), crops, meta, "ijbc", num_workers=0, progress=False)
    with pytest.raises(FileNotFoundError, match="ijbb_face_tid_mid.txt not found: --meta must be the folder of "
                                                "insightface's IJB-B meta files"):
        evaluate_ijb(TinyEmbedder(), crops, meta, "ijbb", num_workers=0, progress=False)


# --------------------------------------------------------------------------------------------------- cache

def test_features_are_cached_reused_and_invalidated(ijb_set, tmp_path):
    crops, meta, known = ijb_set
    cache = tmp_path / "ijbc_features.npy"
    run = dict(num_workers=0, progress=False, cache_path=cache, cache_key={"model_sha256": "a"})
    first = TinyEmbedder()
    result = evaluate_ijb(first, crops, meta, "ijbc", **run)
    assert first.images == 32 and result["features_reused"] == "none"
    assert np.load(cache).shape == (16, 5) and np.load(cache).dtype == np.float32
    again = TinyEmbedder()
    weighted = evaluate_ijb(again, crops, meta, "ijbc", detector_score=True, **run)
    assert again.images == 0 and weighted["features_reused"] == "all"   # the weighting is applied after the cache
    check_against_reference(weighted, *reference(known, again.w64, weighted=True))
    other = TinyEmbedder(seed=3)
    evaluate_ijb(other, crops, meta, "ijbc", **{**run, "cache_key": {"model_sha256": "b"}})
    assert other.images == 32
    bigger = TinyEmbedder()
    evaluate_ijb(bigger, crops, meta, "ijbc", input_size=(112, 112), **{**run, "cache_key": {"model_sha256": "b"}})
    assert bigger.images == 32                                           # another crop is another key
    path = meta / "ijbc_name_5pts_score.txt"
    lines = path.read_text().splitlines()
    fields = lines[0].split()
    fields[1] += "0"                                                    # the same number, written otherwise
    path.write_text("\n".join([" ".join(fields)] + lines[1:]) + "\n")
    moved = TinyEmbedder()
    evaluate_ijb(moved, crops, meta, "ijbc", input_size=(112, 112), **{**run, "cache_key": {"model_sha256": "b"}})
    assert moved.images == 0
    lines = path.read_text().splitlines()
    fields = lines[0].split()
    fields[1] = f"{float(fields[1]) + 0.5:.6f}"                         # a landmark moved: that crop changes
    path.write_text("\n".join([" ".join(fields)] + lines[1:]) + "\n")
    changed = TinyEmbedder()
    evaluate_ijb(changed, crops, meta, "ijbc", input_size=(112, 112), **{**run, "cache_key": {"model_sha256": "b"}})
    assert changed.images == 32


def test_a_killed_extraction_resumes_at_its_first_unfinished_chunk(ijb_set, tmp_path, monkeypatch):
    crops, meta, _ = ijb_set
    monkeypatch.setattr(ijb, "CHUNK_IMAGES", 4)
    cache = tmp_path / "ijbc_features.npy"
    run = dict(batch_size=2, num_workers=0, progress=False, cache_path=cache, cache_key={"m": 1})
    whole = evaluate_ijb(TinyEmbedder(), crops, meta, "ijbc", batch_size=2, num_workers=0, progress=False)
    with pytest.raises(KeyboardInterrupt):
        evaluate_ijb(TinyEmbedder(fail_after=20), crops, meta, "ijbc", **run)
    assert len(list((tmp_path / ".ijbc_features.npy.chunks").glob("chunk_*.npy"))) == 2 and not cache.exists()
    resumed = TinyEmbedder()
    result = evaluate_ijb(resumed, crops, meta, "ijbc", **run)
    assert resumed.images == 2 * (16 - 8) and result["features_reused"] == "2 of 4 chunks (resumed)"
    assert {k: v for k, v in result.items() if k.startswith(("tar", "auc", "eer"))} == \
        {k: v for k, v in whole.items() if k.startswith(("tar", "auc", "eer"))}
    assert not (tmp_path / ".ijbc_features.npy.chunks").exists()


def test_a_network_of_another_input_size_is_refused_before_any_work(ijb_set):
    crops, meta, _ = ijb_set
    embed = TinyEmbedder()
    with pytest.raises(ValueError, match="the network takes 128x128 images; IJB crops are aligned at 112x96 or 112x112"):
        evaluate_ijb(embed, crops, meta, "ijbc", input_size=(128, 128), num_workers=0, progress=False)
    assert embed.images == 0


# ----------------------------------------------------------------------- test.py's entry (evaluate_model_on_ijb)

def test_a_wrong_meta_or_a_foreign_results_file_is_refused_before_the_weights_are_read(ijb_set, tmp_path,
                                                                                        monkeypatch):
    """The weights path does not exist: had the model been read first, its error would be the one shown."""
    crops, meta, _ = ijb_set
    loads = []
    monkeypatch.setattr(ijb, "load_embedder", lambda *args, **kwargs: loads.append(args) or pytest.fail("loaded"))
    absent_model = tmp_path / "run" / "absent.pt"
    results = tmp_path / "lfw_results.json"
    with pytest.raises(FileNotFoundError, match="ijbb_face_tid_mid.txt not found: --meta must be the folder"):
        ijb.evaluate_model_on_ijb(absent_model, "ijbb", crops, meta, results)
    results.write_text("my own notes\n")
    with pytest.raises(FileExistsError, match=f"^{re.escape(str(results))} exists and is not a results file of "
                                              "test.py"):
        ijb.evaluate_model_on_ijb(absent_model, "ijbc", crops, meta, results)
    assert loads == [] and results.read_text() == "my own notes\n"


def test_the_meta_files_are_located_once_per_evaluation(ijb_set, tmp_path, monkeypatch):
    crops, meta, _ = ijb_set
    located = []

    def counted(meta_dir, name):
        located.append((meta_dir, name))
        return original(meta_dir, name)

    original = ijb.meta_files
    monkeypatch.setattr(ijb, "meta_files", counted)
    results = tmp_path / "lfw_results.json"
    label, result = ijb.evaluate_model_on_ijb(None, "ijbc", crops, meta, results, baseline="raw", num_workers=0,
                                              progress=False)
    assert located == [(meta, "ijbc")]
    assert label == "raw pixels" and result["n_pairs"] == 21 and result["meta"] == str(meta)
    # the same figures as the folder given to evaluate_ijb directly
    direct = evaluate_ijb(raw_pixel_embedder, crops, meta, "ijbc", num_workers=0, progress=False)
    assert {k: v for k, v in direct.items() if k.startswith(("tar", "auc", "eer"))} == \
        {k: v for k, v in result.items() if k.startswith(("tar", "auc", "eer"))}


# --------------------------------------------------------------------------- TAR at FAR as insightface reports it

def insightface_tar_at_far(scores, genuine, targets=FAR_TARGETS):
    """insightface's `recognition/_evaluation_/ijb/ijb_11.py` table, transcribed in float64: sklearn's
    `roc_curve` with its default (drop_intermediate=True), both arrays reversed, and per target the point
    minimising (|fpr - target|, position in the reversed arrays) as Python's `min` over tuples orders them."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(genuine.astype(int), scores)
    fpr, tpr = fpr[::-1], tpr[::-1]
    out = {}
    for far in targets:
        _, nearest = min(zip(np.abs(fpr - far), range(len(fpr))))
        out[far] = float(tpr[nearest])
    return out


def rule_tars(scores, genuine, rule, targets=FAR_TARGETS):
    """{target: TAR} by `ijb.tar_at_far`, one target a call (the result's keys are rounded: 0.0126 -> 1e-2)."""
    fpr, tpr = ijb.roc_points(scores, genuine)
    counts = dict(n_impostor=int((~genuine).sum()), n_genuine=int(genuine.sum()))
    return {far: ijb.tar_at_far(fpr, tpr, (far,), rule=rule, **counts)[ijb.far_key(far)] for far in targets}


def test_the_nearest_kept_point_rule_by_hand():
    """Ten impostors at distinct scores, two genuine pairs: sklearn keeps (0, 0), (0, .5), (.5, .5), (.5, 1),
    (1, 1), the impostor-only runs between them being straight and evenly spaced. At FAR .3 the nearest kept
    point is (.5, 1), above the target; ours is the best TAR at FAR <= .3, 0.5. At FAR .1, of the two points
    at FAR 0 the later (higher TAR) one."""
    genuine = np.array([True, True] + [False] * 10)
    scores = np.array([0.9, 0.3, 0.8, 0.7, 0.6, 0.5, 0.4, 0.2, 0.1, 0.05, 0.02, 0.01])
    assert rule_tars(scores, genuine, "insightface", (0.1, 0.3, 0.8)) == {0.1: 0.5, 0.3: 1.0, 0.8: 1.0}
    assert rule_tars(scores, genuine, "at_most", (0.1, 0.3, 0.8)) == {0.1: 0.5, 0.3: 0.5, 0.8: 1.0}


def test_a_dropped_point_is_never_the_nearest():
    """Four scores each shared by one genuine and one impostor pair: the full ROC is the diagonal (0, 0),
    (.25, .25), ..., (1, 1); sklearn keeps only (0, 0), (.25, .25) and (1, 1). At FAR .5 the point (.5, .5)
    is dropped, so the nearest kept one is (.25, .25); at FAR .7 it is (1, 1)."""
    genuine = np.array([True, False] * 4)
    scores = np.repeat([0.9, 0.8, 0.7, 0.6], 2)
    assert rule_tars(scores, genuine, "insightface", (0.5, 0.7)) == {0.5: 0.25, 0.7: 1.0}
    assert rule_tars(scores, genuine, "at_most", (0.5, 0.7)) == {0.5: 0.5, 0.7: 0.5}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_insightface_rule_equals_a_transcription_of_ijb_11_on_scores_with_ties(seed):
    """Scores on a coarse grid (many tied scores, genuine and impostor alike, and evenly spaced runs that
    sklearn drops), FAR targets down to 1e-5 of 200k impostor pairs."""
    rng = np.random.default_rng(seed)
    n_genuine, n_impostor = 3000, 200_000
    genuine = np.r_[np.ones(n_genuine, bool), np.zeros(n_impostor, bool)]
    scores = np.r_[rng.normal(0.55, 0.15, n_genuine), rng.normal(0.0, 0.12, n_impostor)]
    scores = np.round(scores, 3)                                           # ties
    scores[rng.choice(len(scores), 50, replace=False)] = 0.5               # one heavily tied value
    targets = (*FAR_TARGETS[1:], *np.logspace(-5.3, -0.3, 31))
    expected = insightface_tar_at_far(scores, genuine, targets)
    assert rule_tars(scores, genuine, "insightface", targets) == expected
    ours = rule_tars(scores, genuine, "at_most", targets)
    assert any(ours[far] != expected[far] for far in targets)              # the two rules differ here


def test_an_unknown_tar_rule_is_refused_before_any_work(ijb_set):
    crops, meta, _ = ijb_set
    embed = TinyEmbedder()
    with pytest.raises(ValueError, match="unknown TAR rule 'nearest'; expected one of at_most, insightface"):
        evaluate_ijb(embed, crops, meta, "ijbc", tar_rule="nearest", num_workers=0, progress=False)
    assert embed.images == 0


def test_evaluate_ijb_reports_the_rule_it_used(ijb_set, seen_scores):
    crops, meta, known = ijb_set
    ours = evaluate_ijb(TinyEmbedder(), crops, meta, "ijbc", num_workers=0, progress=False)
    theirs = evaluate_ijb(TinyEmbedder(), crops, meta, "ijbc", tar_rule="insightface", detector_score=True,
                          num_workers=0, progress=False)
    assert ours["tar_rule"] == "at_most" and theirs["tar_rule"] == "insightface"
    assert theirs["detector_score_weighting"] is True and ours["detector_score_weighting"] is False
    check_against_reference(ours, *seen_scores[0])
    scores, genuine = seen_scores[1]
    expected = insightface_tar_at_far(scores, genuine)
    assert {far: theirs[ijb.far_key(far)] for far in FAR_TARGETS} == expected


# ------------------------------------------------------------------------------- template ids beyond int64

BEYOND = [str(2 ** 63), "123456789012345678901234567890"]


@pytest.mark.parametrize("value", BEYOND)
@pytest.mark.parametrize("which, line, what", [
    ("face_tid_mid", "1.jpg {} 10", "template id"),
    ("face_tid_mid", "1.jpg 1 {}", "media id"),
    ("template_pair_label", "1 {} 1", "template id"),      # a plain pair file: the fast parse
    ("template_pair_label", "1\f{} 1", "template id"),     # a form feed: the line-by-line parse
])
def test_an_id_beyond_int64_is_named_as_written(ijb_set, which, line, what, value):
    """Was an OverflowError traceback, or (the fast pair parse) the number clamped to 2**63 - 1 in the
    message about a template with no image."""
    crops, meta, _ = ijb_set
    path = meta / f"ijbc_{which}.txt"
    lines = path.read_text().splitlines()
    lines.insert(2, line.format(value))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:3: {what} '{value}' is larger than "
                                         f"9223372036854775807 \\(the largest 64-bit integer\\)"):
        evaluate_ijb(TinyEmbedder(), crops, meta, "ijbc", num_workers=0, progress=False)


def test_an_id_of_thousands_of_digits_is_named_in_one_short_line(ijb_set):
    """Python's int() refuses 4,301+ digits with a message naming no file; the length decides first."""
    crops, meta, _ = ijb_set
    path = meta / "ijbc_face_tid_mid.txt"
    lines = path.read_text().splitlines()
    lines.insert(2, f"1.jpg {'9' * 5000} 10")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:3: template id '9+\\.\\.\\. \\(5002 characters\\) is "
                                         "larger than 9223372036854775807") as caught:
        evaluate_ijb(TinyEmbedder(), crops, meta, "ijbc", num_workers=0, progress=False)
    assert len(str(caught.value)) < 400


def test_the_largest_int64_template_id_is_read(ijb_set, seen_scores):
    """Template 7 renamed 2**63 - 1 (19 digits) in both files: the same scores, the same figures."""
    crops, meta, _ = ijb_set
    before = evaluate_ijb(TinyEmbedder(), crops, meta, "ijbc", num_workers=0, progress=False)
    largest = str(2 ** 63 - 1)
    for which, columns in (("face_tid_mid", (1,)), ("template_pair_label", (0, 1))):
        path = meta / f"ijbc_{which}.txt"
        rows = [line.split() for line in path.read_text().splitlines()]
        for fields in rows:
            for column in columns:
                fields[column] = largest if fields[column] == "7" else fields[column]
        path.write_text("".join(" ".join(fields) + "\n" for fields in rows))
    assert int(read_template_pairs(meta / "ijbc_template_pair_label.txt")[1].max()) == 2 ** 63 - 1
    after = evaluate_ijb(TinyEmbedder(), crops, meta, "ijbc", num_workers=0, progress=False)
    np.testing.assert_array_equal(seen_scores[0][0], seen_scores[1][0])
    assert {k: v for k, v in after.items() if k.startswith(("tar", "auc"))} == \
        {k: v for k, v in before.items() if k.startswith(("tar", "auc"))}
