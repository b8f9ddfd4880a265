import numpy as np
import pytest
import torch
from PIL import Image

from uniformface.data import (GlobalBatchSampler, ImageFolderTrainSet, collate_skip_broken, mix_seed,
                              open_train_set)


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
