"""YouTube Faces: splits.txt read as published (columns by name, splits as folds, malformed lines named),
frames in video order and `frames_per_video`, video features and per-split accuracy equal to an independent
float64 implementation of the protocol, videos without frames, and the feature cache (reused, invalidated,
resumed after a kill)."""
import re

import numpy as np
import pytest
from PIL import Image

from conftest import TinyEmbedder, tiny_feature64
from uniformface.eval import ytf
from uniformface.eval.ytf import evaluate_ytf, natural_key, read_splits, select_frames, video_frames

SIZE = (112, 96)
HEADER = "split number, pair number, first name, second name, is same"


def reference_frame_feature(pixels, w64):
    """[f; f_flip] in float64 straight from the pixels: (p - 127.5) / 128, channels first, @ W."""
    return np.concatenate([tiny_feature64(pixels, w64), tiny_feature64(pixels[:, ::-1], w64)])


def reference_split_accuracies(left, right, same, split, valid):
    """evaluation.m per split, written from the protocol: mean of the other splits' valid left and right
    features subtracted, cosine, the mean of every grid value in -1..1 (step 1e-4) reaching the best count
    of right pairs on the other splits (same: score > t, different: score < t), then that threshold on the
    split itself; a pair without features is wrong."""
    grid = np.arange(-10000, 10001) / 10000
    accuracies, thresholds = [], []
    for k in np.unique(split):
        train = split != k
        mu = np.concatenate([left[train & valid], right[train & valid]]).mean(0)
        a, b = left - mu, right - mu
        score = np.full(len(same), np.nan)
        score[valid] = (a * b).sum(1)[valid] / np.sqrt((a * a).sum(1) * (b * b).sum(1))[valid]
        right_at = [((same & (score > t)) | (~same & (score < t)))[train].sum() for t in grid]
        t = grid[np.array(right_at) == max(right_at)].mean()
        test = ~train
        accuracies.append(((same & (score > t)) | (~same & (score < t)))[test].mean())
        thresholds.append(t)
    return np.array(accuracies), np.array(thresholds)


def frame_number_name(video, k):
    return f"aligned_detect_{video}.{k}.png"


def write_ytf(root, n_names=6, videos_per_name=2, frames=(3, 5, 4), seed=0):
    """An aligned_images_DB-like tree `<name>/<video>/aligned_detect_<video>.<frame>.png` (lossless PNG, so
    the pixels the test knows are the pixels read) and the pixels of every frame."""
    rng = np.random.default_rng(seed)
    pixels = {}
    for n in range(n_names):
        name = f"Person_{n}"
        base = rng.uniform(0, 255, size=(*SIZE, 3))
        for v in range(videos_per_name):
            folder = root / name / str(v)
            folder.mkdir(parents=True)
            count = frames[(n + v) % len(frames)]
            # part the person, part the video: same and different pairs overlap, so accuracies and
            # thresholds are not all at their limits
            video = 0.3 * base + 0.7 * rng.uniform(0, 255, size=base.shape)
            for k in range(count):
                frame_no = 7 + 5 * k   # 7, 12, 17, 22 ...: crosses a digit count, so text order is wrong
                image = np.clip(video + rng.normal(0, 60, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(image).save(folder / frame_number_name(v, frame_no))
                pixels[f"{name}/{v}/{frame_number_name(v, frame_no)}"] = image
    return pixels


def pair_rows(n_splits=4):
    """Each split: 2 same pairs, 2 different pairs, in the published file's style."""
    rows = []
    for s in range(n_splits):
        a, b = (2 * s) % 6, (2 * s + 1) % 6
        rows += [(s + 1, f"Person_{a}/0", f"Person_{a}/1", 1), (s + 1, f"Person_{a}/0", f"Person_{b}/1", 0),
                 (s + 1, f"Person_{b}/0", f"Person_{b}/1", 1), (s + 1, f"Person_{b}/1", f"Person_{(b + 2) % 6}/0", 0)]
    return rows


def write_splits(path, rows, header=HEADER):
    lines = [header] + [f"{s}, {i + 1}, {a}, {b}, {same}" for i, (s, a, b, same) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def ytf_set(tmp_path):
    pixels = write_ytf(tmp_path / "frames")
    rows = pair_rows()
    return tmp_path / "frames", write_splits(tmp_path / "splits.txt", rows), pixels, rows


def reference(pixels, rows, w64, limit=None, missing=(), feature=None):
    """Per split (accuracy, threshold) from the frames' pixels: video feature = the mean over its frames in
    frame-number order (`limit` of them, frame floor(i * n / limit)) of [f; f_flip] (`feature(pixels)`, by
    default the tiny embedder's from `w64`)."""
    feature = feature or (lambda image: reference_frame_feature(image, w64))
    videos = {}
    for rel, image in pixels.items():
        name, video, frame = rel.split("/")
        videos.setdefault(f"{name}/{video}", []).append((int(frame.split(".")[1]), rel))
    features = {}
    for video, frames in videos.items():
        if video in missing:
            continue
        ordered = [rel for _, rel in sorted(frames)]
        if limit is not None and len(ordered) > limit:
            ordered = [ordered[i * len(ordered) // limit] for i in range(limit)]
        features[video] = np.mean([feature(pixels[r]) for r in ordered], 0)
    dim = len(next(iter(features.values())))
    valid = np.array([a in features and b in features for _, a, b, _ in rows])
    left = np.array([features.get(a, np.zeros(dim)) for _, a, _, _ in rows])
    right = np.array([features.get(b, np.zeros(dim)) for _, _, b, _ in rows])
    same = np.array([s == 1 for *_, s in rows])
    split = np.array([s for s, *_ in rows])
    return reference_split_accuracies(left, right, same, split, valid)


# -------------------------------------------------------------------------------------------- splits.txt

def test_splits_are_read_by_column_name_in_file_order(tmp_path):
    rows = pair_rows()
    pairs = read_splits(write_splits(tmp_path / "a.txt", rows))
    assert [(p.split, p.left, p.right, int(p.is_same)) for p in pairs] == rows
    assert pairs[0].line == 2 and pairs[-1].line == 17
    # the same pairs under a header with more columns in another order, a byte-order mark, CRLF and blank lines
    longer = ["Is Same ,split number,first name,second name,first length,second length"]
    longer += [f"{same},{s},{a},{b},100,{50 + i}" for i, (s, a, b, same) in enumerate(rows)]
    (tmp_path / "b.txt").write_bytes(("\ufeff" + "\r\n".join(longer[:3] + [""] + longer[3:]) + "\r\n\r\n").encode())
    assert [(p.split, p.left, p.right, p.is_same) for p in read_splits(tmp_path / "b.txt")] == \
        [(p.split, p.left, p.right, p.is_same) for p in pairs]


def test_splits_as_people_have_them_no_header_or_the_six_column_header(tmp_path):
    """Public copies have no header (five fields, CRLF), others the header with a sixth
    column 'is physically the same, is the same'; both were refused for their first line."""
    rows = pair_rows()
    bare = tmp_path / "bare.txt"
    bare.write_bytes("".join(f"{s},{i + 1},{a},{b},{same}\r\n" for i, (s, a, b, same) in enumerate(rows)).encode())
    pairs = read_splits(bare)
    assert [(p.split, p.left, p.right, int(p.is_same)) for p in pairs] == rows
    assert pairs[0].line == 1 and pairs[-1].line == 16

    # the label is 'is the same'; 'is physically the same' differs from it on two pairs here and is ignored
    six = tmp_path / "six.txt"
    physically = [1 - same if i in (3, 9) else same for i, (*_, same) in enumerate(rows)]
    six.write_bytes(("split number, pair number, first name, second name, is physically the same, is the same\r\n"
                     + "".join(f"{s}, {i + 1}, {a}, {b}, {p}, {same}\r\n"
                               for i, ((s, a, b, same), p) in enumerate(zip(rows, physically)))).encode())
    assert [(p.split, p.left, p.right, int(p.is_same), p.line) for p in read_splits(six)] == \
        [(*row, i + 2) for i, row in enumerate(rows)]

    # anything else stays an error naming the file and line
    lines = bare.read_bytes().decode().split("\r\n")
    lines[5] = "2,6,Person_2/0,Person_2/1,1,0"
    bare.write_text("\r\n".join(lines))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bare))}:6: expected five comma-separated fields \(split "
                                         r"number, pair number, first name, second name, is same\), found 6"):
        read_splits(bare)
    lines[5] = "2,6,Person_2/0,Person_2/1,same"
    bare.write_text("\r\n".join(lines))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bare))}:6: 'is same' is 'same', expected 0 or 1"):
        read_splits(bare)
    six.write_text(six.read_text().replace("is the same", "is it the same", 1))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(six))}:1: expected a header .*no column 'is same' \(or "
                                         r"'is the same'\); or no header and five fields a line"):
        read_splits(six)
    six.write_text("pairs of YouTube Faces\n" + "".join(f"{s},{i + 1},{a},{b},{same}\n"
                                                       for i, (s, a, b, same) in enumerate(rows)))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(six))}:1: expected a header naming the columns"):
        read_splits(six)


@pytest.mark.parametrize("line, problem", [
    ("1, 1, Person_0/0, Person_0/1", "expected 5 comma-separated fields"),
    ("1, 1, Person_0/0, Person_0/1, yes", "'is same' is 'yes'"),
    ("0, 1, Person_0/0, Person_0/1, 1", "split number '0'"),
    ("x, 1, Person_0/0, Person_0/1, 1", "split number 'x'"),
    ("1, 1, Person_0, Person_0/1, 1", "first name 'Person_0' is not '<name>/<video number>'"),
    ("1, 1, Person_0/0, ../etc/1, 1", "second name '../etc/1'"),
    ("3, 1, Person_0/0, Person_0/1, 1", "split 3 where split 1 was expected"),
])
def test_a_malformed_line_is_named(tmp_path, line, problem):
    rows = pair_rows()
    path = write_splits(tmp_path / "s.txt", rows)
    lines = path.read_text().splitlines()
    lines[3] = line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:4: .*{re.escape(problem)}"):
        read_splits(path)


def test_header_order_and_encoding_errors_are_named(tmp_path):
    path = tmp_path / "s.txt"
    write_splits(path, pair_rows(), header="split number, pair number, first name, second name")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:1: expected a header .*no column 'is same'"):
        read_splits(path)
    rows = pair_rows()
    write_splits(path, rows[4:8] + rows[:4] + rows[8:])   # split 2 listed before split 1
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:2: split 2 where split 1 was expected"):
        read_splits(path)
    write_splits(path, rows[:-1])            # the last split one pair short: the folds of 15 pairs (4, 4, 4, 3)
    assert [p.split for p in read_splits(path)] == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 3
    write_splits(path, rows[1:])             # the first one short (3, 4, 4, 4): not the fold layout
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:5: split 2 where split 1 was expected.* "
                                         "consecutive block of one size .* sizes are 3, 4, 4, 4"):
        read_splits(path)
    write_splits(path, [(1, *r[1:]) for r in rows])
    with pytest.raises(ValueError, match="at least 2 splits"):
        read_splits(path)
    path.write_bytes(HEADER.encode() + b"\n1, 1, Jos\xe9/0, Jos\xe9/1, 1\n")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}:2: not UTF-8"):
        read_splits(path)


def test_frames_in_video_order_and_evenly_spaced_selection(tmp_path):
    folder = tmp_path / "A" / "0"
    folder.mkdir(parents=True)
    for k in (100, 9, 10, 99, 1):
        (folder / f"aligned_detect_0.{k}.jpg").write_bytes(b"x")
    (folder / ".hidden.jpg").write_bytes(b"x")
    (folder / "notes.txt").write_text("x")
    frames = video_frames(tmp_path, "A/0")
    assert frames == [f"A/0/aligned_detect_0.{k}.jpg" for k in (1, 9, 10, 99, 100)]
    assert video_frames(tmp_path, "A/1") == [] and video_frames(tmp_path, "B/0") == []
    assert sorted(["a10", "a9", "b1"], key=natural_key) == ["a9", "a10", "b1"]
    assert select_frames(frames, None) == frames and select_frames(frames, 9) == frames
    assert select_frames(frames, 2) == [frames[0], frames[2]] and select_frames(frames, 3) == [frames[0], frames[1],
                                                                                              frames[3]]


# ----------------------------------------------------------------------------------------------- protocol

@pytest.mark.parametrize("limit", [None, 2])
def test_accuracy_per_split_equals_the_float64_reference(ytf_set, limit):
    root, splits, pixels, rows = ytf_set
    embed = TinyEmbedder()
    result = evaluate_ytf(embed, root, splits, frames_per_video=limit, batch_size=4, num_workers=0, progress=False)
    accuracies, thresholds = reference(pixels, rows, embed.w64[SIZE], limit)
    assert result["n_folds"] == 4 and result["n_pairs"] == 16 and result["n_videos"] == 12
    np.testing.assert_array_equal(result["fold_accuracies"], accuracies)
    # a float32 network moves scores by ~1e-6: a threshold (the mean of the tying grid values) may move by
    # a fraction of the grid step 1e-4, never more
    np.testing.assert_allclose(result["thresholds"], thresholds, atol=1e-4)
    assert result["accuracy_mean"] == pytest.approx(accuracies.mean()) and result["frames_per_video"] == limit
    frames = sum(min(n, limit or n) for n in [3, 5, 5, 4, 4, 3, 3, 5, 5, 4, 4, 3])
    assert result["n_frames"] == frames and embed.images == 2 * frames   # every frame with its mirror, once
    assert 0 <= result["auc"] <= 1 and result["missing_videos"] == []


def test_a_video_without_frames_is_an_error_listing_every_one(ytf_set):
    root, splits, pixels, rows = ytf_set
    for video in ("Person_1/1", "Person_3/0"):
        for frame in (root / video).iterdir():
            frame.unlink()
            pixels.pop(f"{video}/{frame.name}")
    (root / "Person_3" / "0").rmdir()
    with pytest.raises(FileNotFoundError, match=r"2 video\(s\) of .* have no frames under .*: Person_1/1, Person_3/0 "
                                                r"\(pass --allow_missing"):
        evaluate_ytf(TinyEmbedder(), root, splits, num_workers=0, progress=False)
    embed = TinyEmbedder()
    result = evaluate_ytf(embed, root, splits, allow_missing=True, num_workers=0, progress=False)
    accuracies, _ = reference(pixels, rows, embed.w64[SIZE], missing=("Person_1/1", "Person_3/0"))
    affected = sum(bool({a, b} & {"Person_1/1", "Person_3/0"}) for _, a, b, _ in rows)
    assert result["n_missing_pairs"] == affected > 0 and result["missing_videos"] == ["Person_1/1", "Person_3/0"]
    np.testing.assert_array_equal(result["fold_accuracies"], accuracies)


# --------------------------------------------------------------------------------------------------- cache

def test_features_are_cached_reused_and_invalidated(ytf_set, tmp_path):
    root, splits, _, _ = ytf_set
    cache = tmp_path / "out" / "ytf_features.npy"
    key = {"model_sha256": "a"}
    first = TinyEmbedder()
    result = evaluate_ytf(first, root, splits, num_workers=0, progress=False, cache_path=cache, cache_key=key)
    assert first.images > 0 and result["features_reused"] == "none" and cache.is_file()
    assert sorted(p.name for p in cache.parent.iterdir()) == ["ytf_features.json", "ytf_features.npy"]
    again = TinyEmbedder()
    repeat = evaluate_ytf(again, root, splits, num_workers=0, progress=False, cache_path=cache, cache_key=key)
    assert again.images == 0 and repeat["features_reused"] == "all"
    assert repeat["fold_accuracies"] == result["fold_accuracies"]
    other_model = TinyEmbedder(seed=1)
    evaluate_ytf(other_model, root, splits, num_workers=0, progress=False, cache_path=cache, cache_key={"model_sha256": "b"})
    assert other_model.images == first.images
    fewer = TinyEmbedder()
    evaluate_ytf(fewer, root, splits, frames_per_video=1, num_workers=0, progress=False, cache_path=cache, cache_key=key)
    assert 0 < fewer.images < first.images                 # another frame selection is another key
    frame = next((root / "Person_0" / "0").iterdir())
    evaluate_ytf(TinyEmbedder(), root, splits, num_workers=0, progress=False, cache_path=cache, cache_key=key)
    Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(frame)   # a frame rewritten since
    changed = TinyEmbedder()
    evaluate_ytf(changed, root, splits, num_workers=0, progress=False, cache_path=cache, cache_key=key)
    assert changed.images == first.images


@pytest.mark.slow
def test_a_killed_extraction_resumes_at_its_first_unfinished_chunk(ytf_set, tmp_path, monkeypatch):
    root, splits, _, _ = ytf_set
    monkeypatch.setattr(ytf, "CHUNK_FRAMES", 10)        # videos grouped until 10 frames: 5 chunks here
    cache = tmp_path / "ytf_features.npy"
    whole = evaluate_ytf(TinyEmbedder(), root, splits, batch_size=4, num_workers=0, progress=False)
    killed = TinyEmbedder(fail_after=30)
    with pytest.raises(KeyboardInterrupt):
        evaluate_ytf(killed, root, splits, batch_size=4, num_workers=0, progress=False, cache_path=cache,
                     cache_key={"m": 1})
    chunks = sorted((tmp_path / ".ytf_features.npy.chunks").glob("chunk_*.npy"))
    assert len(chunks) >= 1 and not cache.exists()
    resumed = TinyEmbedder()
    result = evaluate_ytf(resumed, root, splits, batch_size=4, num_workers=0, progress=False, cache_path=cache,
                          cache_key={"m": 1})
    assert 0 < resumed.images < 2 * whole["n_frames"] and result["features_reused"].endswith("chunks (resumed)")
    assert result["fold_accuracies"] == whole["fold_accuracies"] and result["thresholds"] == whole["thresholds"]
    assert not (tmp_path / ".ytf_features.npy.chunks").exists()


@pytest.mark.parametrize("split", ["4", "1000000", "9" * 5000])
def test_a_split_number_beyond_the_pairs_is_named_at_once(tmp_path, split):
    """More splits than pairs cannot be folds: named by file and line before any fold is made (a split of
    10**8 used to build 10**8 folds; 5,000 digits failed in int() naming no file)."""
    path = tmp_path / "splits.txt"
    path.write_text(f"1, 1, A/0, B/0, 1\n2, 2, A/1, B/1, 0\n{split}, 3, A/2, B/2, 1\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:3: split .*pairs") as caught:
        read_splits(path)
    assert len(str(caught.value)) < 400
