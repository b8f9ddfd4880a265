"""eval/during_training.py: the evaluations a run makes while it trains. The val_targets figures of a real
tiny run equal what `test.py --bin` computes for its final weights, and reach metrics.jsonl, TensorBoard,
plot_runs and gather_results; a `.bin` set is decoded once; the processes that never evaluate hold nothing;
a missing or damaged set is named before the run starts."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_script, write_bin_set
from uniformface.base.config import ConfigError, load_config
from uniformface.eval.during_training import BinSet, LfwFolder, training_evaluators
from uniformface.eval.evaluate import evaluate_bin
from uniformface.nn.models import build_model

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "code" / "configs" / "toy.yaml")


def tiny_run_config(tree, *overrides):
    return load_config(TOY, [f"dataset.train={tree}", "dataset.exclude_identities=[]", "model_name=sphereface4",
                             "emb_dim=8", "batch_size=6", "num_workers=0", "max_iters=4", "checkpoint_every=2",
                             "log_every=2", "milestones=[100]", "warmup_iters=0", "lr=0.05", "device=cpu",
                             "deterministic=true", *overrides])


@pytest.fixture
def bin_sets(tmp_path):
    return [write_bin_set(tmp_path / "bins" / f"{name}.bin", seed=seed) for name, seed in (("lfw", 1), ("cfp_fp", 2))]


@pytest.mark.slow
def test_a_runs_val_targets_are_test_py_bins_figures_in_every_place_they_are_read(tmp_path, tree_factory, bin_sets):
    """A run of 4 iterations evaluating two sets every 2: metrics.jsonl holds val/lfw and val/cfp_fp at 2 and
    4, the last equal to what test.py --bin reports for the final weights; TensorBoard holds the same
    tags; plot_runs draws a panel per set; gather_results lists the last figures beside test.py's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from test_plots import panels
    from test_report import table_rows
    from uniformface.tools.plots import curves_figure, load_runs
    from uniformface.train.trainer import train

    tree = tree_factory(tmp_path / "train", n_classes=3, per_class=4)
    cfg = tiny_run_config(tree, "eval_every=2", "dataset.test=null", "dataset.pairs=null",
                          f"val_targets=[{bin_sets[0]}, {bin_sets[1]}]")
    run = tmp_path / "log" / "run"
    weights = train(cfg, run, progress=False, evaluators=training_evaluators(cfg))

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [line for line in lines if "val/lfw" in line]
    assert [sorted(line) for line in evals] == [["iteration", "val/cfp_fp", "val/lfw"]] * 2
    assert [line["iteration"] for line in evals] == [2, 4]
    assert all(0 <= line[key] <= 1 for line in evals for key in ("val/lfw", "val/cfp_fp"))

    test = load_script("test")
    assert test.main(["--model_path", str(weights), "--bin", *map(str, bin_sets), "--workers", "0", "--device",
                      "cpu", "--no_progress"]) == 0
    reported = json.loads((run / "lfw_results.json").read_text())["bin"]
    assert evals[-1]["val/lfw"] == reported["lfw"]["accuracy_mean"]
    assert evals[-1]["val/cfp_fp"] == reported["cfp_fp"]["accuracy_mean"]

    events = EventAccumulator(str(run))
    events.Reload()
    for key in ("val/lfw", "val/cfp_fp"):
        assert [(e.step, e.value) for e in events.Scalars(key)] == \
               [(line["iteration"], pytest.approx(line[key], rel=1e-6)) for line in evals]

    assert load_script("plot_runs").main([str(run), "--output", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = panels(curves_figure(load_runs([run])))
    for name in ("lfw", "cfp_fp"):
        x, y = drawn[f"{name}.bin accuracy during training (val/{name})"]["alpha=1.0/beta=0.5"]
        assert x.tolist() == [2, 4] and y.tolist() == [line[f"val/{name}"] for line in evals]

    gather = load_script("gather_results")
    output = tmp_path / "table.md"
    assert gather.main([str(run), "--output", str(output)]) == 0
    table = output.read_text()
    row = table_rows(table, "- val_targets during training")["alpha=1.0/beta=0.5"]
    assert row == [4, float(f"{100 * evals[-1]['val/lfw']:.3f}"), float(f"{100 * evals[-1]['val/cfp_fp']:.3f}")]
    assert table_rows(table, "- insightface .bin sets")["alpha=1.0/beta=0.5"] == row[1:]  # test.py's figures


def sphereface4():
    torch.manual_seed(0)
    return build_model("sphereface4", 8, (112, 96)).eval()


@pytest.mark.slow
def test_a_set_is_decoded_once_and_scored_as_test_py_scores_it(tmp_path):
    """The images are read when the set is loaded and never again (the file may even go away); the
    accuracy is evaluate_bin's (test.py --bin) for the same network, 112x112 images cropped to 112x96."""
    path = write_bin_set(tmp_path / "agedb_30.bin", n_pairs=20)
    model = sphereface4()
    expected = evaluate_bin(model, path, input_size=(112, 96), num_workers=0, progress=False)["accuracy_mean"]
    bin_set = BinSet(path, (112, 96))
    bin_set.load()
    assert bin_set.images.dtype == torch.uint8 and bin_set.images.shape == (40, 3, 112, 96)
    path.write_bytes(b"gone")
    assert bin_set(model, 7) == {"val/agedb_30": expected}
    assert bin_set(model, 8) == {"val/agedb_30": expected}


@pytest.mark.slow
def test_the_evaluators_of_a_config_in_order_and_none_loaded_where_nothing_evaluates(tmp_path, lfw_tree, bin_sets):
    """The LFW folder first, then the sets in val_targets' order; `load=False` (torchrun's other ranks)
    gives the same list, with nothing read; without eval_every there is nothing to evaluate."""
    root, pairs = lfw_tree
    listed = f"val_targets=[{bin_sets[1]}, {bin_sets[0]}]"
    cfg = load_config(TOY, ["eval_every=5", f"dataset.test={root}", f"dataset.pairs={pairs}", listed])
    evaluators = training_evaluators(cfg)
    assert [type(e) for e in evaluators] == [LfwFolder, BinSet, BinSet]
    assert [e.name for e in evaluators[1:]] == ["cfp_fp", "lfw"]
    assert all(e.images is not None and e.images.shape[2:] == (112, 96) for e in evaluators[1:])
    idle = training_evaluators(cfg, load=False)
    assert [type(e) for e in idle] == [LfwFolder, BinSet, BinSet] and all(e.images is None for e in idle[1:])
    assert training_evaluators(load_config(TOY, [listed])) == []  # eval_every 0
    only_bins = training_evaluators(load_config(TOY, ["eval_every=5", "dataset.test=null", "dataset.pairs=null",
                                                      listed]), load=False)
    assert [type(e) for e in only_bins] == [BinSet, BinSet]
    model = sphereface4()
    figures = {}
    for evaluate in evaluators:
        figures.update(evaluate(model, 5))
    assert sorted(figures) == ["lfw_accuracy", "lfw_accuracy_std", "val/cfp_fp", "val/lfw"]
    assert all(0 <= figures[key] <= 1 for key in ("lfw_accuracy", "val/cfp_fp", "val/lfw"))


def test_a_missing_or_damaged_set_is_named_before_the_run_starts(tmp_path, bin_sets):
    cfg = load_config(TOY, ["eval_every=5", "dataset.test=null", "dataset.pairs=null",
                            f"val_targets=[{bin_sets[0]}, {tmp_path / 'agedb_30.bin'}]"])
    with pytest.raises(ConfigError, match=f"key 'val_targets': no such file {tmp_path / 'agedb_30.bin'}"):
        training_evaluators(cfg)
    (tmp_path / "agedb_30.bin").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=f"{tmp_path / 'agedb_30.bin'}: not a readable insightface .bin pickle"):
        training_evaluators(cfg)
    write_bin_set(tmp_path / "agedb_30.bin", n_pairs=9)
    with pytest.raises(ValueError, match=f"{tmp_path / 'agedb_30.bin'}: 9 pairs; insightface's protocol needs at "
                                         "least 10"):
        training_evaluators(cfg)
    write_bin_set(tmp_path / "agedb_30.bin", n_pairs=10, size=(100, 100))
    with pytest.raises(ValueError, match=f"{tmp_path / 'agedb_30.bin'}: image 0: image is 100x100 but the network "
                                         "takes 112x96"):
        training_evaluators(cfg)
