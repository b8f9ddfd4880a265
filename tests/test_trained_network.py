"""A trained network read back: the weights file checked before use (one line naming it, never advice to
load with weights_only=False), the network rebuilt from its stored spec, the baselines, the class-center
spread kept with the weights, and the run's config.yaml beside them."""
import numpy as np
import pytest
import torch
from PIL import Image

from uniformface.train.checkpoint import export_weights
from uniformface.nn.models import build_model
from uniformface.eval.trained_network import (center_stats, configured_dataset, load_backbone, load_embedder,
                                              raw_pixel_embedder, read_weights, run_config)

SPEC = {"model_name": "sphereface4", "emb_dim": 32, "input_size": [112, 96]}


def saved_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("sphereface4", 32).eval()
    path = tmp_path / "run" / "sphereface4_32.pt"
    export_weights(path, model, SPEC, {"centers": torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])})
    return model, path


def test_load_backbone_rebuilds_the_network_from_its_spec(tmp_path):
    model, path = saved_model(tmp_path)
    loaded, spec, payload = load_backbone(path)
    assert spec == SPEC and not loaded.training and "centers" in payload
    x = torch.randn(2, 3, 112, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert read_weights(path)["spec"] == SPEC


def test_weights_that_are_not_weights_are_one_line_errors(tmp_path):
    _, path = saved_model(tmp_path)
    with pytest.raises(ValueError, match=r"is a folder: give the weights file .*\(here: sphereface4_32.pt\)"):
        read_weights(path.parent)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        read_weights(tmp_path / "absent.pt")
    jpeg = tmp_path / "photo.pt"
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(jpeg, format="JPEG")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:4000])
    for bad in (jpeg, cut):
        with pytest.raises(ValueError, match=f"{bad}: .*not a weights file") as caught:
            read_weights(bad)
        assert "weights_only=False" not in str(caught.value) and "\n" not in str(caught.value)
    payload = torch.load(path, weights_only=True)
    for change, problem in ((lambda p: p["spec"].pop("emb_dim"), "spec.emb_dim is missing"),
                            (lambda p: p["spec"].update(input_size=[112]), "spec.input_size is missing or not"),
                            (lambda p: p["spec"].update(model_name=3), "spec.model_name is missing"),
                            (lambda p: p.update(model=[1]), "'model' is not a mapping")):
        edited = {**payload, "spec": dict(payload["spec"])}
        change(edited)
        torch.save(edited, tmp_path / "edited.pt")
        with pytest.raises(ValueError, match=f"not a weights file written by train.py: .*{problem}"):
            read_weights(tmp_path / "edited.pt")
    torch.save({**payload, "spec": {**SPEC, "input_size": [112, 112]}}, tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=r"wide.pt: the weights do not fit the spec .*input 112x112.*fc5.weight"):
        load_backbone(tmp_path / "wide.pt")
    torch.save({**payload, "spec": {**SPEC, "model_name": "resnet9000"}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other.pt: its spec \(resnet9000, .*\) names no network"):
        load_backbone(tmp_path / "other.pt")


def test_load_embedder_and_its_baselines(tmp_path):
    model, path = saved_model(tmp_path)
    x = torch.randn(2, 3, 112, 96, generator=torch.Generator().manual_seed(2))
    embed, label, input_size, extra = load_embedder(path)
    assert (label, input_size) == ("sphereface4_32", (112, 96)) and extra["n_centers"] == 3
    with torch.no_grad():
        assert torch.equal(embed(x), model(x))
    embed, label, input_size, extra = load_embedder(path, baseline="raw")
    assert embed is raw_pixel_embedder and (label, input_size, extra) == ("raw pixels", None, {})
    assert torch.equal(raw_pixel_embedder(x), x.reshape(2, -1))
    embed, label, input_size, extra = load_embedder(path, baseline="untrained", seed=5)
    torch.manual_seed(5)
    fresh = build_model("sphereface4", 32).eval()
    assert (label, input_size, extra) == ("sphereface4 untrained", (112, 96), {})
    with torch.no_grad():
        assert torch.equal(embed(x), fresh(x)) and not torch.equal(embed(x), model(x))


def test_center_distance_of_head_weights_in_weight_mode():
    """center_mode: weight keeps no feature centers; the head's class weights are the centers."""
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(7, 5))
    expected = np.mean([min(np.sqrt(((weight[i] - weight[j]) ** 2).sum()) for j in range(7) if j != i)
                        for i in range(7)])
    stats = center_stats({"head": {"weight": torch.tensor(weight), "iteration": torch.tensor(3)}})
    assert stats["centers_from"] == "head weights" and stats["n_centers"] == 7
    assert abs(stats["mean_min_center_distance"] - expected) < 1e-9
    unit = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    expected_angle = np.mean([min(np.degrees(np.arccos(np.clip(unit[i] @ unit[j], -1, 1))) for j in range(7) if j != i)
                              for i in range(7)])
    assert abs(stats["mean_min_center_angle"] - expected_angle) < 1e-9
    # feature centers win over head weights when both exist (center_mode: feature exports both)
    stats = center_stats({"head": {"weight": torch.tensor(weight)}, "centers": torch.tensor(weight[:3] * 2),
                          "centers_initialized": torch.tensor([True, True, True])})
    assert stats["centers_from"] == "feature centers" and stats["n_centers"] == 3
    assert center_stats({"centers": torch.zeros(3, 2), "centers_initialized": torch.tensor([True, False, False])}) == {}
    assert center_stats({}) == {}


def test_run_config_beside_the_weights(tmp_path):
    _, path = saved_model(tmp_path)
    config = path.parent / "config.yaml"
    assert run_config(path) == {} and configured_dataset(path, "test") is None
    config.write_text("")
    assert run_config(path) == {}
    config.write_text("model_name: sphereface4\ndataset: {test: data/lfw, pairs: data/pairs.txt}\n")
    assert run_config(path)["model_name"] == "sphereface4"
    assert (configured_dataset(path, "test"), configured_dataset(path, "pairs")) == ("data/lfw", "data/pairs.txt")
    config.write_text("dataset: {test: [a, b]}\n")
    with pytest.raises(ValueError, match=f"{config}: key dataset.test is not a path; fix it, or pass --dataset$"):
        configured_dataset(path, "test")
    config.write_text("dataset: data/lfw\n")
    with pytest.raises(ValueError, match="key dataset.pairs is not a path; fix it, or pass --pairs_path$"):
        configured_dataset(path, "pairs")
    config.write_text("model_name: sphereface4\ndataset: {test: [unclosed\n")
    with pytest.raises(ValueError, match=f"{config}:.*not valid YAML.*; fix it, or pass --dataset and --pairs_path"):
        run_config(path)
    config.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ValueError, match=f"{config}: expected a mapping of config keys, found a list"):
        run_config(path)


def test_center_figures_from_one_sweep_equal_the_two_separate_figures():
    """center_stats takes both figures from centers.nearest_center_figures; they are what the separate
    mean_min_distance and mean_min_angle give, for centers of unequal norms (nearest by distance and by
    angle differ) in float32 as train.py keeps them, to the digits report.py prints and beyond."""
    from uniformface.nn.centers import mean_min_angle, mean_min_distance

    generator = torch.Generator().manual_seed(5)
    centers = torch.randn(40, 16, generator=generator) * torch.rand(40, 1, generator=generator).mul(4).add(0.1)
    stats = center_stats({"centers": centers, "centers_initialized": torch.ones(40, dtype=torch.bool)})
    assert isinstance(stats["mean_min_center_distance"], float) and isinstance(stats["mean_min_center_angle"], float)
    assert stats["mean_min_center_distance"] == pytest.approx(float(mean_min_distance(centers)), rel=1e-6)
    assert stats["mean_min_center_angle"] == pytest.approx(mean_min_angle(centers), abs=1e-12)
    assert stats["n_centers"] == 40


def test_run_config_refuses_a_yaml_alias_bomb_naming_the_file(tmp_path):
    """test.py and embed.py read the config.yaml beside the weights through run_config: an alias there
    (a billion laughs) is refused as the file is read, naming it and its line."""
    from test_config import billion_laughs

    _, path = saved_model(tmp_path)
    config = path.parent / "config.yaml"
    config.write_text("model_name: sphereface4\n" + billion_laughs("milestones"))
    with pytest.raises(ValueError, match=rf"^{config}:4: YAML alias \*l0 refused .*; fix it, or pass --dataset"):
        run_config(path)
