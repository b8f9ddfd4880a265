"""embed.py (issue 4, item 6): a folder's embeddings in a .npy with the file names beside it."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uniformface.checkpoint import export_weights
from uniformface.embedding import list_images, load_embeddings
from uniformface.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def embed_main(args):
    spec = importlib.util.spec_from_file_location("script_embed", ROOT / "code" / "embed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(args)


@pytest.fixture
def setup(tmp_path, tree_factory):
    torch.manual_seed(1)
    model = build_model("sphereface4", 16).eval()
    model_path = tmp_path / "run" / "sphereface4_16.pt"
    export_weights(model_path, model, {"model_name": "sphereface4", "emb_dim": 16, "input_size": [112, 96]})
    folder = tree_factory(tmp_path / "faces", n_classes=2, per_class=3)
    wide = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)   # a 112x112 crop
    (folder / "extra" / "deeper").mkdir(parents=True)
    Image.fromarray(wide).save(folder / "extra" / "deeper" / "wide.png")
    (folder / ".hidden.jpg").write_bytes(b"not read")
    (folder / "notes.txt").write_text("not an image")
    return model, model_path, folder


def direct(model, pixels):
    x = torch.from_numpy((np.asarray(pixels, np.float32) - 127.5) / 128).permute(2, 0, 1)[None]
    with torch.no_grad():
        return model(x)[0].double().numpy(), model(x.flip(-1))[0].double().numpy()


def test_folder_embeddings_and_names(setup, tmp_path, capsys):
    model, model_path, folder = setup
    output = tmp_path / "out" / "faces.npy"
    common = ["--model_path", str(model_path), "--dataset", str(folder), "--workers", "0", "--no_progress",
              "--batch_size", "3"]
    assert embed_main(common + ["--output", str(output)]) == 0
    names = (tmp_path / "out" / "faces.txt").read_text().splitlines()
    expected_names = sorted(str(p.relative_to(folder).as_posix()) for p in folder.rglob("*")
                            if p.is_file() and p.suffix in (".jpg", ".png") and not p.name.startswith("."))
    assert names == expected_names and len(names) == 7 and "extra/deeper/wide.png" in names
    embeddings = np.load(output)
    assert embeddings.dtype == np.float32 and embeddings.shape == (7, 16)
    for row, name in zip(embeddings, names):
        pixels = np.asarray(Image.open(folder / name).convert("RGB"))
        if pixels.shape[1] == 112:
            pixels = pixels[:, 8:104]   # SPEC §7: the 112x96 crop inside the 112x112 one
        np.testing.assert_allclose(row, direct(model, pixels)[0], atol=1e-5)
    assert "7 x 16" in capsys.readouterr().out

    assert embed_main(common + ["--output", str(tmp_path / "unit.npy"), "--mode", "insightface"]) == 0
    unit, listed = load_embeddings(tmp_path / "unit.npy")
    assert listed == names
    for row, name in zip(unit, names):
        pixels = np.asarray(Image.open(folder / name).convert("RGB"))
        f, f_flip = direct(model, pixels[:, 8:104] if pixels.shape[1] == 112 else pixels)
        np.testing.assert_allclose(row, (f + f_flip) / np.linalg.norm(f + f_flip), atol=1e-5)


def test_errors_name_the_file(setup, tmp_path, capsys):
    model, model_path, folder = setup
    Image.fromarray(np.zeros((100, 90, 3), np.uint8)).save(folder / "extra" / "small.jpg")
    args = ["--model_path", str(model_path), "--dataset", str(folder), "--output", str(tmp_path / "e.npy"),
            "--workers", "0", "--no_progress"]
    assert embed_main(args) == 1
    err = capsys.readouterr().err
    assert "small.jpg" in err and "100x90" in err and "112x96" in err
    assert not (tmp_path / "e.npy").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(SystemExit):
        embed_main(args[:5] + ["embeddings.csv"])
