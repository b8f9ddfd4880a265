"""ablation.py: a grid's values read as YAML and expanded first axis slowest, the settings' folder names,
bad grids refused. ablate.py's own tests (training and testing a grid, resuming it) are in test_ablate.py."""
import pytest

from uniformface.tools.ablation import expand, folder_name, parse_grid
from uniformface.base.config import ConfigError


def test_grid_values_are_yaml_and_expand_first_axis_slowest():
    axes = parse_grid(["alpha=0,1", "beta=0,1e-3", "milestones=[2,4],[3]", "loss.name=cosface"])
    assert axes == [("alpha", [0, 1]), ("beta", [0, 0.001]), ("milestones", [[2, 4], [3]]),
                    ("loss.name", ["cosface"])]
    assert isinstance(axes[1][1][1], float)  # YAML 1.2: 1e-3 is a number, not the string "1e-3"
    settings = expand(axes)
    assert len(settings) == 8
    assert [(s["alpha"], s["beta"]) for s in settings[::2]] == [(0, 0), (0, 0.001), (1, 0), (1, 0.001)]
    assert folder_name(settings[1]) == "alpha=0_beta=0_milestones=3_loss.name=cosface"
    assert folder_name({"alpha": 1.0, "beta": 0.001, "dataset.train": "a/b c"}) == \
        "alpha=1_beta=0.001_dataset.train=a-b-c"


@pytest.mark.parametrize("items, message", [(["alpha"], "KEY=V1"), (["alpha="], "no values"),
                                            (["alpha=0,,1"], "cannot parse '0,,1'"), (["alpha=0", "alpha=1"], "twice"),
                                            ([], "at least one")])
def test_bad_grid_is_refused(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(items)


def test_the_settings_curves_are_drawn_beside_the_tables_and_linked(tmp_path, monkeypatch):
    """Every setting that has logged gets a line named as its row (a setting that never started none); the
    markdown links the figure when it was drawn."""
    import json
    from pathlib import Path

    import yaml

    from uniformface.tools import ablation
    from uniformface.tools.ablation import draw_curves, plan, results_markdown
    from uniformface.base.config import to_dict

    toy = str(Path(__file__).resolve().parents[1] / "code" / "configs" / "toy.yaml")
    settings = plan(toy, tmp_path, ["alpha=0,1", "lr=0.1,0.05"])
    for s, accuracy in zip(settings[:3], (0.25, 0.5, 0.75)):
        s.folder.mkdir(parents=True)
        (s.folder / "config.yaml").write_text(yaml.safe_dump(to_dict(s.cfg)))
        (s.folder / "metrics.jsonl").write_text(json.dumps({"iteration": 20, "accuracy": accuracy}) + "\n")
    drawn = []
    save_png = ablation.save_png
    monkeypatch.setattr(ablation, "save_png", lambda figure, path: drawn.append(figure) or save_png(figure, path))
    assert not draw_curves(settings[3:], tmp_path / "none.png") and not (tmp_path / "none.png").exists()
    assert draw_curves(settings, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    accuracy = drawn[0].axes[0]
    assert accuracy.get_title() == "training accuracy"
    assert {line.get_label(): list(line.get_ydata()) for line in accuracy.get_lines()} == \
        {"alpha=0.0/beta=0.5/lr=0.1": [0.25], "alpha=0.0/beta=0.5/lr=0.05": [0.5], "alpha=1.0/beta=0.5/lr=0.1": [0.75]}
    markdown = results_markdown(settings, "# grid", "curves.png")
    assert markdown.endswith("- training curves of the settings\n\n![training curves](curves.png)\n")
    assert "curves.png" not in results_markdown(settings, "# grid")


def test_missing_inputs_name_val_targets_and_a_config_without_an_lfw_folder(tmp_path):
    """Before any work, ablate.py lists what its settings need and lack: the training set, each val_targets
    set, and the LFW folder it tests every setting on, which a config such as paper.yaml leaves null (that
    was a TypeError traceback)."""
    from pathlib import Path

    from uniformface.tools.ablation import missing_inputs, plan

    paper = str(Path(__file__).resolve().parents[1] / "code" / "configs" / "paper.yaml")
    train = tmp_path / "faces_emore"
    train.mkdir()
    (tmp_path / "lfw.bin").write_bytes(b"")
    lacking = tmp_path / "cfp_fp.bin"
    settings = plan(paper, tmp_path / "log", ["alpha=0,1"],
                    [f"dataset.train={train}", f"val_targets=[{tmp_path / 'lfw.bin'}, {lacking}]"])
    assert missing_inputs(settings) == [
        f"val_targets: {lacking}",
        "dataset.test: null (ablate.py tests each setting on the aligned LFW folder)",
        "dataset.pairs: null (ablate.py tests each setting on the aligned LFW folder)"]
    lfw, pairs = tmp_path / "lfw", tmp_path / "pairs.txt"
    lfw.mkdir()
    pairs.write_text("10\t300\n")
    settings = plan(paper, tmp_path / "log", ["alpha=0,1"],
                    [f"dataset.train={train}", f"val_targets=[{tmp_path / 'lfw.bin'}]", f"dataset.test={lfw}",
                     f"dataset.pairs={pairs}"])
    assert missing_inputs(settings) == []
