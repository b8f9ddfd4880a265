"""data/packed.py: a packed set is recognised by its files, filtered like a folder, made from a folder
or a .rec, refused by name when damaged, and trains bit-identically to its folder. pack_dataset.py's own
test is in test_pack_dataset.py."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from uniformface.base.config import load_config
from uniformface.data import ImageFolderTrainSet, PackedTrainSet, open_train_set, pack, write_record_file
from uniformface.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def test_dispatch_filters_and_rec_source(tmp_path, aligned_tree):
    folder = ImageFolderTrainSet(aligned_tree)
    summary = pack(aligned_tree, tmp_path / "a", progress=False)
    plain_dir = tmp_path / "renamed"
    summary.output.rename(plain_dir)  # any folder holding meta.json + images.u8 is recognised
    subset = open_train_set(plain_dir, exclude=["0000002"], min_images_per_class=6)
    assert isinstance(subset, PackedTrainSet) and subset.classes == ["0000000", "0000001", "0000003"]
    assert len(subset) == 18 and subset[12][1] == 2 and torch.equal(subset[12][0], folder[18][0])

    rec = tmp_path / "r" / "train.rec"
    write_record_file(rec, rec.with_suffix(".idx"), [(s.path, s.label) for s in folder.samples])
    from_rec = open_train_set(pack(rec, tmp_path / "from_rec", progress=False).output)
    assert from_rec.classes == ["0", "1", "2", "3"]
    for i in range(len(folder)):
        assert torch.equal(from_rec[i][0], folder[i][0]) and from_rec[i][1] == folder[i][1]


def test_damaged_pack_fails_naming_the_file(tmp_path, tree_factory):
    tree = tree_factory(tmp_path / "t", n_classes=2, per_class=2)
    out = pack(tree, tmp_path / "p.packed", progress=False).output
    images = out / "images.u8"
    images.write_bytes(images.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"images\.u8: 129023 bytes, expected 129024 for shape \[4, 3, 112, 96\]"):
        open_train_set(out)
    with pytest.raises(FileNotFoundError, match=r"nothing\.packed: not a packed dataset"):
        open_train_set(tmp_path / "nothing.packed")
    (out / "meta.json").write_text('{"format": "uniformface-packed", ')
    with pytest.raises(ValueError, match=r"meta\.json: not the JSON that code/pack_dataset\.py writes \(Expecting"):
        open_train_set(out)
    (out / "meta.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"meta\.json: format None version None, expected 'uniformface-packed'"):
        open_train_set(out)


@pytest.mark.slow
def test_training_on_the_packed_set_matches_the_folder(tmp_path, aligned_tree):
    packed = pack(aligned_tree, tmp_path / "train", progress=False).output

    def run(train_dir, name):
        overrides = [f"dataset.train={train_dir}", "dataset.exclude_identities=[]", "model_name=sphereface4",
                     "emb_dim=32", "batch_size=8", "num_workers=0", "max_iters=2", "checkpoint_every=2",
                     "log_every=1", "warmup_iters=0", "lr=0.05", "device=cpu", "deterministic=true", "flip=true"]
        train(load_config(ROOT / "code" / "configs" / "toy.yaml", overrides), tmp_path / name, progress=False)
        return torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)

    from_folder, from_packed = run(aligned_tree, "folder"), run(packed, "packed")
    assert from_packed["iteration"] == 2 and from_packed["classes"] == from_folder["classes"]
    # same pixels, labels, batch order and flips: the two runs are bit-identical
    for key, value in from_folder["model"].items():
        assert torch.equal(value, from_packed["model"][key]), key


def test_check_images_notes_what_packing_left_out(tmp_path, tree_factory):
    from uniformface.data import check_images

    tree = tree_factory(tmp_path / "t", n_classes=2, per_class=2)
    assert check_images(open_train_set(tree), [112, 96], tree).notes == []
    out = pack(tree, tmp_path / "p.packed", progress=False).output
    assert check_images(open_train_set(out), [112, 96], out).notes == []
    meta = json.loads((out / "meta.json").read_text())
    meta["skipped"] = [["t/a/broken.jpg", "cannot be decoded"]]
    (out / "meta.json").write_text(json.dumps(meta))
    check = check_images(open_train_set(out), [112, 96], out)
    assert check.notes == [f"1 images of the source were left out when {out} was packed (unreadable or of another "
                           f"size; listed under 'skipped' in {out / 'meta.json'})"]
    assert check.lines(out) == [f"note: {check.notes[0]}"]


class Trap:
    """Unpickling it creates the file `path`: the proof that a loader unpickled what it read."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_labels_file_holding_a_pickle_is_named_and_never_unpickled(tmp_path, tree_factory):
    """A labels.npy holding a pickle was numpy's own message, naming no file."""
    tree = tree_factory(tmp_path / "t", n_classes=2, per_class=2)
    out = pack(tree, tmp_path / "p.packed", progress=False).output
    labels = out / "labels.npy"
    trap = tmp_path / "unpickled"
    np.save(labels, np.array([Trap(trap)] * 4, dtype=object), allow_pickle=True)   # an object array
    with pytest.raises(ValueError, match=rf"^{re.escape(str(labels))}: not the int64 array that "
                                         r"code/pack_dataset\.py writes .*nothing in it was unpickled"):
        open_train_set(out)
    import pickle

    labels.write_bytes(pickle.dumps(Trap(trap)))                                   # a bare pickle, no .npy header
    with pytest.raises(ValueError, match=rf"^{re.escape(str(labels))}: not the int64 array"):
        open_train_set(out)
    assert not trap.exists()
    np.save(labels, np.zeros(4))                                                   # floats: not labels
    with pytest.raises(ValueError, match=rf"^{re.escape(str(labels))}: not the int64 array .*float64"):
        open_train_set(out)
    labels.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(labels))}: not the int64 array"):
        open_train_set(out)
    meta = json.loads((out / "meta.json").read_text())
    del meta["classes"]
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"meta\.json: no usable 'classes'"):
        open_train_set(out)
