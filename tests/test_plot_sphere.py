"""plot_sphere.py end to end: tiny networks drawn side by side on the sphere (3-d as they are, 8-d by PCA,
as the title says), panels named from the runs' config.yaml, and an unreadable model or folder as one line."""
from pathlib import Path

import torch
import yaml

from conftest import load_script, write_aligned_tree
from hostile import one_line_error
from test_plots import is_png
from uniformface.train.checkpoint import export_weights
from uniformface.nn.models import build_model


def tiny_run(folder, emb_dim, alpha, seed=0):
    """A run folder as train.py leaves it, for an untrained network (its centers: random directions)."""
    torch.manual_seed(seed)
    model = build_model("sphereface4", emb_dim).eval()
    path = folder / f"sphereface4_{emb_dim}.pt"
    export_weights(path, model, {"model_name": "sphereface4", "emb_dim": emb_dim, "input_size": [112, 96]},
                   {"centers": torch.randn(3, emb_dim), "centers_initialized": torch.ones(3, dtype=torch.bool),
                    "classes": ["0000000", "0000001", "0000002"]})
    (folder / "config.yaml").write_text(yaml.safe_dump({"alpha": alpha, "beta": 0.5, "emb_dim": emb_dim}))
    return path


def test_two_models_side_by_side(tmp_path, capsys):
    tree = write_aligned_tree(tmp_path / "test", n_classes=3, per_class=2)
    a, b = tiny_run(tmp_path / "a", 3, 0.0), tiny_run(tmp_path / "b", 8, 1.0, seed=1)
    output = tmp_path / "sphere.png"
    plot_sphere = load_script("plot_sphere")
    assert plot_sphere.main(["--model_path", str(a), str(b), "--dataset", str(tree), "--output", str(output),
                             "--device", "cpu", "--no_progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert is_png(output)
    assert out[0].startswith("alpha=0.0/beta=0.5: 3 classes, 6 images, 3-d; mean nearest-center angle ")
    assert out[1].startswith("alpha=1.0/beta=0.5: 3 classes, 6 images, 8-d; ")
    assert "8-d: PCA of the unit centers to 3-d" in out[1] and out[2] == f"wrote {output}"

    assert plot_sphere.main(["--model_path", str(a), "--dataset", str(tree), "--output", str(output),
                             "--device", "cpu"]) == 1
    one_line_error(capsys.readouterr().err, "plot_sphere.py: error:", str(output), "--overwrite")


def test_an_unreadable_model_or_folder_is_one_line(tmp_path, capsys):
    tree = write_aligned_tree(tmp_path / "test", n_classes=2, per_class=1)
    plot_sphere = load_script("plot_sphere")
    output = tmp_path / "sphere.png"
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n not a model")
    common = ["--dataset", str(tree), "--output", str(output), "--device", "cpu", "--no_progress"]
    assert plot_sphere.main(["--model_path", str(junk), *common]) == 1
    one_line_error(capsys.readouterr().err, "plot_sphere.py: error:", str(junk))
    assert plot_sphere.main(["--model_path", str(tmp_path / "absent.pt"), *common]) == 1
    one_line_error(capsys.readouterr().err, "model file not found", str(tmp_path / "absent.pt"))
    model = tiny_run(tmp_path / "run", 3, 1.0)
    (model.parent / "config.yaml").write_text("alpha: [1\n")
    assert plot_sphere.main(["--model_path", str(model), *common]) == 1
    one_line_error(capsys.readouterr().err, f"{model.parent / 'config.yaml'}:", "not valid YAML")
    assert plot_sphere.main(["--model_path", str(model), *common, "--names", "x", "--dataset", str(tmp_path / "none")]) == 1
    one_line_error(capsys.readouterr().err, str(tmp_path / "none"))
    assert plot_sphere.main(["--model_path", str(model), *common, "--names", "x", "y"]) == 2
    assert "2 names for 1 models" in capsys.readouterr().err
    assert not output.exists()


def test_a_yaml_alias_bomb_beside_the_weights_is_one_line(tmp_path, capsys):
    """The panel names come from the config.yaml beside each model: a billion laughs there is refused at
    once, naming the file and line, before any network is loaded (without --names)."""
    from test_config import billion_laughs

    model = tiny_run(tmp_path / "run", 3, 1.0)
    (model.parent / "config.yaml").write_text(billion_laughs("alpha") + "beta: 0.5\n")
    output = tmp_path / "sphere.png"
    assert load_script("plot_sphere").main(["--model_path", str(model), "--dataset", str(tmp_path / "none"),
                                            "--output", str(output), "--device", "cpu", "--no_progress"]) == 1
    one_line_error(capsys.readouterr().err, f"plot_sphere.py: error: {model.parent / 'config.yaml'}:3: YAML alias *l0")
    assert not output.exists()
