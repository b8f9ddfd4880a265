"""eval/during_training.py: the evaluations a run makes while it trains. A `.bin` set is decoded once and
scored as `test.py --bin` scores it; the processes that never evaluate hold nothing; a missing or damaged
set is named before the run starts."""
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_bin
from uniformface.base.config import ConfigError, load_config
from uniformface.eval.during_training import BinSet, LfwFolder, training_evaluators
from uniformface.eval.evaluate import evaluate_bin
from uniformface.nn.models import build_model

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "code" / "configs" / "toy.yaml")


def write_bin_set(path, n_pairs=40, size=(112, 112), seed=0):
    """A `.bin` of `n_pairs` pairs of real JPEGs, same and different alternating: each identity a smooth
    pattern of its own, each image of it with its own noise, so that a network can tell some apart."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[0], 0:size[1]] / max(size)

    def identity():
        freq = rng.uniform(2, 9, size=(3, 2))
        return np.stack([np.sin(2 * np.pi * (f[0] * yy + f[1] * xx)) for f in freq], -1)

    def photo(base):
        return np.clip(127.5 + 90 * base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)

    images, issame = [], []
    for k in range(n_pairs):
        same = k % 2 == 0
        a = identity()
        images += [photo(a), photo(a if same else identity())]
        issame.append(same)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bin(path, images, issame)
    return path


@pytest.fixture
def bin_sets(tmp_path):
    return [write_bin_set(tmp_path / "bins" / f"{name}.bin", seed=seed) for name, seed in (("lfw", 1), ("cfp_fp", 2))]


def sphereface4():
    torch.manual_seed(0)
    return build_model("sphereface4", 8, (112, 96)).eval()


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
