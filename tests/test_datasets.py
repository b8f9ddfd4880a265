import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import bomb_png, write_lfw_tree
from uniformface.align.crop import TEMPLATE_112x96 as TEMPLATE
from uniformface.data import (GlobalBatchSampler, ImageFolderTrainSet, ReportingView, check_images,
                              collate_report_broken, collate_skip_broken, mix_seed, open_train_set,
                              write_record_file)
from uniformface.data.folder import FALLBACK_REASON


def make_tree(root, counts, size=(96, 112)):
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.jpg", quality=95)
    return root


def test_labels_follow_sorted_names_and_exclusions(tmp_path):
    root = make_tree(tmp_path / "casia", {"0000450": 2, "0000045": 3, "0166921": 2, "0000099": 1})
    ds = open_train_set(root, exclude=["0166921"], min_images_per_class=2)
    assert ds.classes == ["0000045", "0000450"]  # sorted; excluded and too-small classes gone
    assert [s.label for s in ds.samples] == [0, 0, 0, 1, 1]
    image, label = ds[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 112, 96) and label == 1
    # decoded pixels equal PIL's decoding of the same JPEG (RGB, (3,H,W) layout)
    reference = np.asarray(Image.open(ds.samples[3].path).convert("RGB"))
    assert np.abs(image.permute(1, 2, 0).numpy().astype(int) - reference).max() <= 2


def test_identity_folders_are_found_as_preprocessing_finds_them(tmp_path):
    """The folder scan is `images.walk_images` at depth 2: a symlinked identity folder is a class, hidden
    entries, loose files and deeper folders are not; a dangling link is an image that is named unreadable."""
    root = make_tree(tmp_path / "t", {"b": 2, ".hidden": 1})
    elsewhere = make_tree(tmp_path / "elsewhere", {"a": 2})
    (root / "a").symlink_to(elsewhere / "a", target_is_directory=True)
    (root / "b" / "deeper").mkdir()
    Image.fromarray(np.zeros((112, 96, 3), np.uint8)).save(root / "b" / "deeper" / "x.jpg")
    Image.fromarray(np.zeros((112, 96, 3), np.uint8)).save(root / "loose.jpg")
    (root / "b" / "002.jpg").symlink_to(tmp_path / "absent.jpg")
    ds = ImageFolderTrainSet(root)
    assert ds.classes == ["a", "b"]
    assert [s.path for s in ds.samples] == [str(root / "a" / "000.jpg"), str(root / "a" / "001.jpg"),
                                            str(root / "b" / "000.jpg"), str(root / "b" / "001.jpg"),
                                            str(root / "b" / "002.jpg")]
    check = check_images(ds, [112, 96], root)
    assert len(check.unreadable) == 1 and check.unreadable[0].startswith(f"{root / 'b' / '002.jpg'}: cannot read")


def test_flip_depends_only_on_seed_epoch_index(tmp_path):
    root = make_tree(tmp_path / "t", {"a": 4, "b": 4})
    ds = ImageFolderTrainSet(root, flip=True, seed=3)
    plain = ImageFolderTrainSet(root, flip=False)
    flips = []
    for epoch in range(3):
        for index in range(len(ds)):
            img, _ = ds[(epoch, index)]
            ref, _ = plain[index]
            flipped = bool(mix_seed(3, epoch, index) & 1)
            assert torch.equal(img, ref.flip(-1) if flipped else ref)
            flips.append(flipped)
    assert 0.2 < np.mean(flips) < 0.8  # both branches taken


def test_broken_image_is_skipped_and_counted(tmp_path):
    root = make_tree(tmp_path / "t", {"a": 2, "b": 2})
    (root / "a" / "001.jpg").write_bytes(b"not a jpeg")
    ds = ImageFolderTrainSet(root)
    images, labels, n_broken = collate_skip_broken([ds[i] for i in range(4)])
    assert n_broken == 1 and images.shape[0] == 3 and labels.tolist() == [0, 1, 1]


def test_missing_or_empty_dataset_messages(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        open_train_set(tmp_path / "nope")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        open_train_set(tmp_path / "empty")


def test_sampler_ranks_split_the_global_batch_and_resume_continues():
    n, batch = 50, 8
    single = GlobalBatchSampler(n, batch, seed=1)
    it = iter(single)
    first = [next(it) for _ in range(14)]  # crosses an epoch boundary (6 batches per epoch)
    for step in first:
        assert len(step) == batch
    epoch0 = [i for step in first[:6] for _, i in step]
    assert len(set(epoch0)) == 48  # a permutation, last partial batch dropped
    assert {e for step in first[6:12] for e, _ in step} == {1}
    ranks = [iter(GlobalBatchSampler(n, batch, seed=1, rank=r, world_size=2)) for r in range(2)]
    for step in first:
        assert next(ranks[0]) + next(ranks[1]) == step
    resumed = iter(GlobalBatchSampler(n, batch, seed=1, start_iter=9))
    assert [next(resumed) for _ in range(5)] == first[9:14]
    with pytest.raises(ValueError, match="not divisible"):
        GlobalBatchSampler(n, 9, seed=0, world_size=2)


def test_sizes_are_checked_from_headers_and_bad_images_skipped_by_name(tmp_path):
    """Every file's header, before training; unreadable and wrong-sized ones are skipped
    by name (a decompression bomb among them: it used to escape decode_image as a loader traceback)."""
    root = make_tree(tmp_path / "t", {"a": 3, "b": 3})
    odd = root / "b" / "002.jpg"
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(odd)
    (root / "a" / "001.jpg").write_bytes(bomb_png())
    (root / "b" / "000.jpg").write_bytes(b"garbage")
    ds = ImageFolderTrainSet(root)
    with pytest.raises(ValueError, match="cannot decode image .*001.jpg"):
        ds.load(1)
    sizes, unreadable = ds.header_sizes()
    assert sizes.tolist() == [[112, 96], [-1, -1], [112, 96], [-1, -1], [112, 96], [112, 112]]
    assert sorted(unreadable) == [1, 3] and "cannot read its header" in unreadable[3]
    check = check_images(ds, [112, 96], root)
    assert len(check.unreadable) == 2 and check.wrong_size == [f"{odd}: 112x112"]
    lines = check.lines(root)
    assert lines[0].startswith(f"warning: 2 of the 6 training images in {root} cannot be read and are skipped: "
                               f"{root / 'a' / '001.jpg'}: cannot read its header")
    assert lines[1] == (f"warning: 1 of the 6 training images in {root} have another size than input_size and are "
                        f"skipped: {odd}: 112x112")
    images, labels, problems = collate_report_broken([ReportingView(ds)[i] for i in range(6)])
    assert images.shape == (3, 3, 112, 96) and labels.tolist() == [0, 0, 1]
    assert problems[2] == f"{odd}: 112x112, not the input_size 112x96"
    assert ds[5] == (None, 1)  # the plain item is still (image or None, label)


def test_no_readable_or_no_right_sized_image_is_an_error_naming_the_folder(tmp_path):
    root = make_tree(tmp_path / "t", {"a": 2, "b": 2})
    for path in root.glob("*/*.jpg"):
        path.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=rf"training set {root}: none of its 4 image files can be read \(4 unreadable, "
                                         r"e\.g\. .*000\.jpg: cannot read its header"):
        check_images(ImageFolderTrainSet(root), [112, 96], root)
    square = make_tree(tmp_path / "sq", {"a": 2, "b": 2}, size=(112, 112))
    with pytest.raises(ValueError, match=r"are 112x112 but input_size is \[112, 96\]; "
                                         r"set --set input_size=\[112,112\]"):
        check_images(ImageFolderTrainSet(square), [112, 96], square)


def test_recordio_image_of_another_size_is_skipped_by_name_when_met(tmp_path):
    """A .rec has no cheap per-image header: its first images set the check, later ones are checked as met."""
    def jpeg(height, width):
        import io

        buffer = io.BytesIO()
        Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(buffer, format="JPEG")
        return buffer.getvalue()

    rec = tmp_path / "train.rec"
    write_record_file(rec, tmp_path / "train.idx", [(jpeg(112, 96), 0), (jpeg(112, 96), 0), (jpeg(112, 112), 1),
                                                    (jpeg(112, 96), 1)])
    ds = open_train_set(rec)
    check = check_images(ds, [112, 96], rec)
    assert not check.header_checked and ds.expected_size == (112, 96)
    image, label, problem = ReportingView(ds)[2]
    assert image is None and label == 1 and problem == f"{rec} record 3: 112x112, not the input_size 112x96"
    assert ReportingView(ds)[3][2] is None


# ------------------------------------------------------------------------ fallback crops never train

# raw images of 112x96 with landmarks near SphereFace's template (TEMPLATE) align almost unchanged


def preprocessed_tree(tmp_path, missed, pairs=False):
    """A raw LFW-named tree of real JPEG files (`conftest.write_lfw_tree`: Person_00 .. Person_05, three images
    each, and its pairs.txt) aligned by preprocess.py's library from a landmarks file that lacks the images
    in `missed`: the detector's misses, which `--fallback auto` aligns with the mean landmarks (LFW names).
    Returns (aligned folder, raw folder, pairs.txt)."""
    from uniformface.align.preprocessing import Options, preprocess

    raw, pairs_file = write_lfw_tree(tmp_path)
    rng = np.random.default_rng(3)
    names = sorted(p.relative_to(raw).as_posix() for p in raw.glob("*/*.jpg"))
    marks = tmp_path / "marks.txt"
    marks.write_text("".join(f"{name}\t" + "\t".join(f"{v:.4f}" for v in (TEMPLATE + rng.normal(0, 1, (5, 2))).ravel())
                             + "\n" for name in names if name not in missed))
    out = tmp_path / "aligned"
    summary = preprocess(Options(dataset=raw, output_dir=out, landmarks=marks, workers=0, progress=False))
    assert summary.fallback == len(missed) and summary.aligned == len(names) - len(missed)
    return out, raw, pairs_file


def test_fallback_crops_listed_in_the_report_never_train(tmp_path):
    """LFW-named training trees got mean-landmark fallbacks under `--fallback auto`, and the folder set
    trained on them. Now the report's fallback rows are left out (an identity left with none is no
    class) and counted in the note train.py logs; the crops stay on disk for test sets."""
    missed = ["Person_01/Person_01_0002.jpg", "Person_05/Person_05_0001.jpg", "Person_05/Person_05_0002.jpg",
              "Person_05/Person_05_0003.jpg"]
    out, _, _ = preprocessed_tree(tmp_path, missed)
    assert all((out / name).is_file() for name in missed)  # written: a test set keeps every pair
    ds = open_train_set(out)
    assert isinstance(ds, ImageFolderTrainSet) and ds.classes == [f"Person_0{k}" for k in range(5)]
    used = sorted(Path(s.path).relative_to(out).as_posix() for s in ds.samples)
    assert len(used) == 14 and not set(used) & set(missed)
    assert ds.left_out == [(str(out / name), FALLBACK_REASON) for name in missed]
    check = check_images(ds, [112, 96], out)
    note = (f"note: 4 fallback crops left out: faces the detector missed, which preprocess.py aligned with mean "
            f"landmarks (status 'fallback' in {out / 'preprocess_report.tsv'}); they never train")
    assert check.lines(out) == [note]

    # a killed run's fallbacks are in its journal (the report is written at the end): left out too, but
    # not a last line the kill cut short (its output was never renamed into place)
    report = out / "preprocess_report.tsv"
    lines = report.read_text().splitlines(keepends=True)
    report.write_text("".join(line for line in lines if "Person_05" not in line))
    (out / ".preprocess_journal.tsv").write_text("".join(line for line in lines if "Person_05_000" in line)
                                                 + "Person_01/Person_01_0001.jpg\tfallb")
    ds = open_train_set(out)
    assert len(ds) == 14 and "Person_01/Person_01_0001.jpg" in {Path(s.path).relative_to(out).as_posix()
                                                                 for s in ds.samples}
    assert len(ds.left_out) == 4


def test_a_report_in_the_training_folder_that_preprocess_did_not_write_is_an_error_naming_it(tmp_path):
    """It decides what never trains: a file of its name that is not the report stops training, by name."""
    root = make_tree(tmp_path / "t", {"a": 2, "b": 2})
    (root / "preprocess_report.tsv").write_text("my notes on this set\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(root / 'preprocess_report.tsv'))}:1: not a report of "
                                         r"preprocess\.py \(first line 'my notes on this set'"):
        open_train_set(root)
    (root / "preprocess_report.tsv").write_text("path\tstatus\tdetail\na/000.jpg\tfallback\n")
    with pytest.raises(ValueError, match=r"preprocess_report\.tsv:2: not a row of preprocess\.py's report"):
        open_train_set(root)
    (root / "preprocess_report.tsv").write_bytes(b"path\tstatus\tdetail\na/\xff.jpg\tfallback\tx\n")
    with pytest.raises(ValueError, match=r"preprocess_report\.tsv:2: not UTF-8"):
        open_train_set(root)
    (root / "preprocess_report.tsv").write_text("path\tstatus\tdetail\na/000.jpg\tfallback\tmean landmarks\n")
    assert len(open_train_set(root)) == 3
    (root / "preprocess_report.tsv").unlink()
    os.mkfifo(root / "preprocess_report.tsv")  # read unasked: a FIFO would block the reader for ever
    with pytest.raises(ValueError, match=r"preprocess_report\.tsv: not a regular file"):
        open_train_set(root)
