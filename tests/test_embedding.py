"""Images -> features: the template crop that lets 112x112 crops feed a 112x96 network, and the one
flip-and-embed (`flip_embed`) with which test.py, verify.py and embed.py form their features."""
import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from uniformface.eval import embedding
from uniformface.eval.embedding import crop_offset, embed_folder, extract_features, fit_to_input, flip_embed
from uniformface.nn.models import build_model


def test_crop_offset_is_the_template_shift():
    assert crop_offset((112, 112), (112, 96)) == (0, 8)      # the 112x112 template: +8 in x
    assert crop_offset((112, 96), (112, 96)) == (0, 0)
    assert crop_offset((112, 96), (112, 112)) is None and crop_offset((120, 120), (112, 96)) is None
    image = torch.arange(3 * 112 * 112).reshape(3, 112, 112)
    assert torch.equal(fit_to_input(image, (112, 96), "x"), image[:, :, 8:104])
    with pytest.raises(ValueError, match=r"some/file.jpg: image is 100x90 but the network takes 112x96"):
        fit_to_input(torch.zeros(3, 100, 90), (112, 96), "some/file.jpg")


def test_flip_embed_forms_each_protocols_feature():
    """Against the network called on the same batch and the features combined in numpy float64:
    plain f; sphereface [f, f_flip] (evaluation.m); insightface (f + f_flip) / |f + f_flip|, equal to the last
    bit."""
    torch.manual_seed(0)
    model = build_model("sphereface4", 16).eval()
    x = (torch.randint(0, 256, (3, 3, 112, 96), generator=torch.Generator().manual_seed(1)).float() - 127.5) / 128
    with torch.no_grad():
        both = model(torch.cat([x, x.flip(-1)])).numpy().astype(np.float64)
    f, f_flip = both[:3], both[3:]
    mirrored = x.numpy()[..., ::-1].copy()  # the flip itself, independently: columns reversed
    with torch.no_grad():
        np.testing.assert_allclose(f_flip, model(torch.from_numpy(mirrored)).double().numpy(), rtol=1e-5, atol=1e-6)
    summed = f + f_flip
    for mode, expected in (("plain", f), ("sphereface", np.concatenate([f, f_flip], 1)),
                           ("insightface", summed / np.sqrt((summed * summed).sum(1, keepdims=True)))):
        got = flip_embed(model, x, mode)
        assert got.dtype == np.float64 and got.shape == expected.shape
        if mode == "insightface":  # numpy's norm may sum in another order than the plain sum above
            np.testing.assert_allclose(got, expected, rtol=1e-15, atol=0)
        else:
            np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="unknown embedding mode 'arcface'; expected one of plain, sphereface"):
        flip_embed(model, x, "arcface")


class Images(Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], index


def test_extract_features_batch_by_batch_in_dataset_order():
    """With a network that treats each image alone (a fixed pixel sample, exact in float32), features
    gathered batch by batch through the loader equal those of one batch, row for row."""
    images = torch.randint(0, 256, (7, 3, 8, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))

    def embed(x):
        return x.flatten(1)[:, ::7] * 2 + x.flatten(1)[:, 1::7]

    whole = (images.float() - 127.5) / 128
    for mode in ("plain", "sphereface", "insightface"):
        got = extract_features(embed, Images(images), mode, batch_size=3, num_workers=0, progress=False)
        np.testing.assert_array_equal(got, flip_embed(embed, whole, mode))
    assert extract_features(embed, Images(images), "plain", 3, 0, progress=False).shape == (7, 21)
    with pytest.raises(ValueError, match="no images to embed"):
        extract_features(embed, Images(images[:0]), "plain", progress=False)
    with pytest.raises(ValueError, match="unknown embedding mode 3"):  # the mode comes before the batch size
        extract_features(embed, Images(images), 3, progress=False)


def test_non_finite_features_are_refused_where_features_are_formed():
    """A diverged network's NaN features must not be scored (a NaN cosine counts as 'different'), cached
    or written: flip_embed, the one place features are formed, refuses them for every mode."""
    images = torch.zeros(2, 3, 4, 4)

    def broken(x):
        out = torch.ones(len(x), 3)
        out[1, 0] = float("nan")
        return out

    for mode in ("plain", "sphereface", "insightface"):
        with pytest.raises(ValueError, match="non-finite features"):
            flip_embed(broken, images, mode)


def test_a_bad_mode_is_one_error_from_each_public_entry_point(tmp_path):
    """flip_embed, extract_features and embed_folder each refuse an unknown mode with the same message,
    before any image is read: embed_folder refuses it even for a folder that does not exist."""
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)

    def embed(x):
        return x.flatten(1)[:, :5]

    message = "unknown embedding mode 'flip'; expected one of plain, sphereface, insightface$"
    with pytest.raises(ValueError, match=message):
        flip_embed(embed, images.float(), "flip")
    with pytest.raises(ValueError, match=message):
        extract_features(embed, Images(images), "flip", num_workers=0, progress=False)
    with pytest.raises(ValueError, match=message):
        embed_folder(embed, tmp_path / "absent", None, "flip", num_workers=0, progress=False)


def test_the_mode_is_checked_once_per_public_call_not_per_batch(tmp_path, monkeypatch):
    """The public entry points check the mode; the batches and the nested calls under them do not again."""
    from PIL import Image

    checked = []
    real_check = embedding.check_mode
    monkeypatch.setattr(embedding, "check_mode", lambda mode: (checked.append(mode), real_check(mode)))

    def embed(x):
        return x.flatten(1)[:, :5]

    images = torch.randint(0, 256, (7, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    features = extract_features(embed, Images(images), "sphereface", batch_size=3, num_workers=0, progress=False)
    assert features.shape == (7, 10) and checked == ["sphereface"]  # three batches, one check

    for index, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / f"{index}.png")
    checked.clear()
    features, names = embed_folder(embed, tmp_path, None, "insightface", batch_size=3, num_workers=0,
                                   progress=False)
    assert features.shape == (7, 5) and len(names) == 7 and checked == ["insightface"]


def test_save_embeddings_writes_nothing_for_a_name_it_cannot_list(tmp_path):
    """A name that cannot be a line of the UTF-8 names file (a non-UTF-8 file name as Python holds it, with
    a surrogate escape; a line break) is refused before either file is written."""
    output = tmp_path / "out" / "e.npy"
    for name, problem in (("caf\udce9.jpg", r"caf\\xe9.jpg: the file name is not UTF-8"),
                          ("two\nlines.jpg", "file names with line breaks")):
        with pytest.raises(ValueError, match=problem):
            embedding.save_embeddings(output, np.zeros((2, 3), np.float32), ["a.jpg", name])
        assert not output.parent.exists() or list(output.parent.iterdir()) == []
