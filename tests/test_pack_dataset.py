"""pack_dataset.py end to end: a training tree packed into one uint8 memory map keeps the decoded pixels,
labels and flips of the folder it came from; unreadable and odd-sized images are reported and skipped; an
existing output is refused unless --overwrite."""
import json

import numpy as np
import torch
from PIL import Image

import pack_dataset as cli
from uniformface.data import ImageFolderTrainSet, PackedTrainSet, mix_seed, open_train_set


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
