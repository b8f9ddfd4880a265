"""embed.py: a folder's embeddings in a .npy with the file names beside it."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_script
from hostile import one_line_error
from test_evaluate import direct_feature
from uniformface.train.checkpoint import export_weights
from uniformface.eval.embedding import list_images, names_path
from uniformface.nn.models import build_model


def embed_main(args):
    return load_script("embed").main(args)


def load_embeddings(output):
    """Read back what `save_embeddings` wrote."""
    output = Path(output)
    embeddings = np.load(output, allow_pickle=False)
    listing = names_path(output)
    if not listing.is_file() and output.with_suffix(".txt").is_file():
        raise FileNotFoundError(f"{listing} not found; {output.with_suffix('.txt')} may be the names list of an "
                                f"older embed.py: rename it to {listing.name} if it is")
    names = listing.read_text(encoding="utf-8").splitlines()
    if len(names) != len(embeddings):
        raise ValueError(f"{output}: {len(embeddings)} rows but {names_path(output)} lists {len(names)} names")
    return embeddings, names


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


@pytest.mark.slow
def test_folder_embeddings_and_names(setup, tmp_path, capsys):
    model, model_path, folder = setup
    output = tmp_path / "out" / "faces.npy"
    common = ["--model_path", str(model_path), "--dataset", str(folder), "--workers", "0", "--no_progress",
              "--batch_size", "3"]
    assert embed_main(common + ["--output", str(output)]) == 0
    names = (tmp_path / "out" / "faces.names.txt").read_text().splitlines()
    expected_names = sorted(str(p.relative_to(folder).as_posix()) for p in folder.rglob("*")
                            if p.is_file() and p.suffix in (".jpg", ".png") and not p.name.startswith("."))
    assert names == expected_names and len(names) == 7 and "extra/deeper/wide.png" in names
    embeddings = np.load(output)
    assert embeddings.dtype == np.float32 and embeddings.shape == (7, 16)
    for row, name in zip(embeddings, names):
        pixels = np.asarray(Image.open(folder / name).convert("RGB"))
        if pixels.shape[1] == 112:
            pixels = pixels[:, 8:104]   # the 112x96 crop inside the 112x112 one
        np.testing.assert_allclose(row, direct_feature(model, pixels)[0], atol=1e-5)
    assert "7 x 16" in capsys.readouterr().out

    assert embed_main(common + ["--output", str(tmp_path / "unit.npy"), "--mode", "insightface"]) == 0
    unit, listed = load_embeddings(tmp_path / "unit.npy")
    assert listed == names
    for row, name in zip(unit, names):
        pixels = np.asarray(Image.open(folder / name).convert("RGB"))
        f, f_flip = direct_feature(model, pixels[:, 8:104] if pixels.shape[1] == 112 else pixels)
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
    assert embed_main(args[:5] + ["embeddings.csv"]) == 2


def test_names_go_beside_the_npy_and_nothing_is_clobbered(setup, tmp_path, capsys):
    """`--output X.npy` wrote the names to X.txt, replacing whatever was there (a pairs.txt)."""
    model, model_path, folder = setup
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("1\t1\nA\t1\t2\nA\t1\tB\t1\n")
    common = ["--model_path", str(model_path), "--dataset", str(folder), "--workers", "0", "--no_progress"]
    assert embed_main(common + ["--output", str(tmp_path / "pairs.npy")]) == 0
    assert pairs.read_text() == "1\t1\nA\t1\t2\nA\t1\tB\t1\n"
    listing = tmp_path / "pairs.names.txt"
    assert listing.read_text().splitlines() == list_images(folder)
    capsys.readouterr()

    before = (tmp_path / "pairs.npy").read_bytes()
    listing.write_text("someone else's notes\n")
    assert embed_main(common + ["--output", str(tmp_path / "pairs.npy")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pairs.npy already exists" in err and "--overwrite" in err
    (tmp_path / "pairs.npy").unlink()                  # the names file alone also blocks
    assert embed_main(common + ["--output", str(tmp_path / "pairs.npy")]) == 1
    assert "pairs.names.txt already exists" in capsys.readouterr().err
    assert listing.read_text() == "someone else's notes\n" and not (tmp_path / "pairs.npy").exists()
    assert embed_main(common + ["--output", str(tmp_path / "pairs.npy"), "--overwrite"]) == 0
    assert (tmp_path / "pairs.npy").read_bytes() == before and listing.read_text().splitlines() == list_images(folder)


def test_hostile_inputs_end_in_one_line(setup, tmp_path, capsys):
    """Each ends in `error: ...` naming the file or device, exit 1, no traceback."""
    model, model_path, folder = setup
    out = tmp_path / "o.npy"
    common = ["--dataset", str(folder), "--no_progress", "--workers", "0"]
    jpeg = tmp_path / "photo.pt"                      # a JPEG renamed .pt: torch suggests weights_only=False
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(jpeg, format="JPEG")
    mismatched = tmp_path / "mismatch.pt"              # the spec says 32-d, the tensors are 16-d
    payload = torch.load(model_path, weights_only=True)
    payload["spec"]["emb_dim"] = 32
    torch.save(payload, mismatched)
    cases = [(["--model_path", str(jpeg), "--output", str(out)], [str(jpeg), "not a weights file"]),
             (["--model_path", str(mismatched), "--output", str(out)], [str(mismatched), "fc5", "emb_dim 32"]),
             (["--model_path", str(model_path), "--output", str(out), "--device", "gpu"], ["--device 'gpu'"]),
             (["--model_path", str(tmp_path), "--output", str(out)], [f"{tmp_path} is a folder"])]
    if not torch.cuda.is_available():
        cases.append((["--model_path", str(model_path), "--output", str(out), "--device", "cuda"],
                      ["--device cuda: no CUDA GPU", "--device cpu"]))
    for args, words in cases:
        assert embed_main(common + args) == 1, args
        err = capsys.readouterr().err
        one_line_error(err, *words)
        assert "weights_only=False" not in err
    assert not out.exists()
    assert embed_main(common + ["--model_path", str(jpeg), "--output", str(out), "--debug"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_read_only_output_folder_and_a_worker_error(setup, tmp_path, capsys):
    from hostile import read_only_folder

    model, model_path, folder = setup
    common = ["--model_path", str(model_path), "--dataset", str(folder), "--no_progress"]
    with read_only_folder(tmp_path / "ro") as ro:
        assert embed_main(common + ["--workers", "0", "--output", str(ro / "e.npy")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"embed.py: error: {ro / 'e.npy'}: ") and err.count("\n") == 1 and "permissions" in err, err
    # A broken image read by a loader worker: torch re-raises it with the worker's traceback as its message.
    (folder / "0000001" / "zz_broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    assert embed_main(common + ["--workers", "1", "--output", str(tmp_path / "w.npy")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("embed.py: error: cannot decode image") and "zz_broken.jpg" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and "worker" not in err


@pytest.mark.slow
def test_a_file_name_that_is_not_utf8_is_named_before_anything_is_written(setup, tmp_path, capsys):
    """Was: X.npy written, then the names list failed to encode (X.npy without X.names.txt), and the rerun
    refused because X.npy existed. Now one line names the file before any feature is computed."""
    import os
    import shutil

    model, model_path, folder = setup
    bad = os.path.join(os.fsencode(folder / "0000001"), b"caf\xe9.jpg")      # Latin-1 bytes
    shutil.copyfile(folder / "0000001" / "000.jpg", bad)
    output = tmp_path / "out" / "e.npy"
    args = ["--model_path", str(model_path), "--dataset", str(folder), "--output", str(output), "--workers", "0",
            "--no_progress"]
    assert embed_main(args) == 1
    one_line_error(capsys.readouterr().err, f"{folder / '0000001'}/caf\\xe9.jpg", "not UTF-8", "rename it")
    assert not output.exists() and not names_path(output).exists()
    assert not output.parent.exists() or list(output.parent.iterdir()) == []    # no temporary either
    os.rename(bad, folder / "0000001" / "cafe.jpg")
    assert embed_main(args) == 0                                               # the rerun is not refused
    assert "0000001/cafe.jpg" in names_path(output).read_text(encoding="utf-8").splitlines()
