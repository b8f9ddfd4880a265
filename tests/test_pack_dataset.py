"""pack_dataset.py end to end: a training tree packed into one uint8 memory map keeps the decoded pixels,
labels and flips of the folder it came from; unreadable and odd-sized images are reported and skipped; an
existing output is refused unless --overwrite."""
import json

import numpy as np
import torch
from PIL import Image

import pack_dataset as cli
from test_datasets import preprocessed_tree
from uniformface.data import ImageFolderTrainSet, PackedTrainSet, check_images, mix_seed, open_train_set
from uniformface.data.folder import FALLBACK_REASON


def run_cli(*args):
    return cli.main([*map(str, args), "--workers", "0", "--no_progress"])


def test_pack_keeps_decoded_pixels_labels_and_flips(tmp_path, aligned_tree, capsys):
    (aligned_tree / "0000001" / "002.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (50, 40)).save(aligned_tree / "0000003" / "zzz.png")  # another size than the first image
    assert run_cli("--dataset", aligned_tree, "--output", tmp_path / "casia") == 0
    report = capsys.readouterr().out
    assert "0000001/002.jpg: cannot be decoded" in report and "zzz.png: size 40x50 differs from" in report
    assert "packed 23 images of 112x96" in report and "2 skipped" in report

    out = tmp_path / "casia.packed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["casia.packed", "train"]  # no temporary left behind
    assert (out / "images.u8").stat().st_size == 23 * 3 * 112 * 96
    meta = json.loads((out / "meta.json").read_text())
    assert meta["shape"] == [23, 3, 112, 96] and meta["classes"] == ["0000000", "0000001", "0000002", "0000003"]

    folder = ImageFolderTrainSet(aligned_tree)
    broken = {str(aligned_tree / "0000001" / "002.jpg"), str(aligned_tree / "0000003" / "zzz.png")}
    good = [i for i, s in enumerate(folder.samples) if s.path not in broken]
    assert len(good) == 23
    packed = open_train_set(out, flip=True, seed=7)
    assert isinstance(packed, PackedTrainSet) and packed.classes == folder.classes and len(packed) == 23
    flips = []
    for epoch in range(2):
        for i, j in enumerate(good):
            image, label = packed[(epoch, i)]
            plain, expected_label = folder[j]
            flipped = bool(mix_seed(7, epoch, i) & 1)
            assert image.dtype == torch.uint8 and torch.equal(image, plain.flip(-1) if flipped else plain)
            assert label == expected_label
            flips.append(flipped)
    assert 0 < np.mean(flips) < 1

    assert run_cli("--dataset", aligned_tree, "--output", out) == 1  # refuses to overwrite
    assert "exists" in capsys.readouterr().err
    assert run_cli("--dataset", aligned_tree, "--output", out, "--exclude", "0000000", "--overwrite") == 0
    assert len(open_train_set(out)) == 17 and open_train_set(out).classes == ["0000001", "0000002", "0000003"]


def test_fallback_crops_are_left_out_counted_and_listed(tmp_path, capsys):
    """The crops preprocess.py's report lists as fallbacks are not packed (nor written to a
    .rec); stdout counts them, meta.json lists them, and training on the packed set notes them."""
    missed = ["Person_02/Person_02_0003.jpg", "Person_04/Person_04_0001.jpg"]
    aligned, _, _ = preprocessed_tree(tmp_path, missed)
    assert run_cli("--dataset", aligned, "--output", tmp_path / "set") == 0
    out = capsys.readouterr().out
    report = aligned / "preprocess_report.tsv"
    assert (f"note: 2 fallback crops left out: faces the detector missed, which preprocess.py aligned with mean "
            f"landmarks (status 'fallback' in {report}); they never train") in out
    assert "packed 16 images of 112x96" in out and "0 skipped; 2 fallback crops left out" in out
    packed = open_train_set(tmp_path / "set.packed")
    assert len(packed) == 16 and packed.classes == [f"Person_0{k}" for k in range(6)]
    meta = json.loads((tmp_path / "set.packed" / "meta.json").read_text())
    assert meta["skipped"] == [[str(aligned / name), FALLBACK_REASON] for name in missed]
    folder = ImageFolderTrainSet(aligned)
    for i in range(16):  # the packed rows are the folder's items, fallbacks absent from both
        assert torch.equal(packed[i][0], folder[i][0]) and packed[i][1] == folder[i][1]
    assert check_images(packed, [112, 96], tmp_path / "set.packed").notes == [
        f"2 images of the source were left out when {tmp_path / 'set.packed'} was packed (2 fallback crops of "
        f"preprocess.py, which never train; listed under 'skipped' in {tmp_path / 'set.packed' / 'meta.json'})"]

    assert run_cli("--dataset", aligned, "--output", tmp_path / "set.rec") == 0
    out = capsys.readouterr().out
    assert "note: 2 fallback crops left out" in out and "wrote 16 images of 6 classes" in out
    assert len(open_train_set(tmp_path / "set.rec")) == 16
