"""figure.py (`make figure`): its config trains a 3-d embedding on the figure's toy set, and the per-identity
split holds out the same images whatever the detector missed. The whole command (minutes of training) runs
only by `make figure`; test_cli.py checks its command line."""
from pathlib import Path

import pytest

from uniformface.commands import figure
from uniformface.base.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_config_is_the_demos_with_a_3d_embedding_on_the_split_set():
    cfg = load_config(ROOT / "code" / "configs" / "figure.yaml")
    demo = load_config(ROOT / "code" / "configs" / "toy.yaml")
    assert cfg.emb_dim == 3 and cfg.eval_every == 0 and cfg.alpha == 1.0  # the default uniform loss
    assert (cfg.model_name, cfg.loss, cfg.beta, cfg.center_mode, cfg.normalize_centers, cfg.uniform_reduction) == \
        (demo.model_name, demo.loss, demo.beta, demo.center_mode, demo.normalize_centers, demo.uniform_reduction)
    assert cfg.dataset.train == "data/figure/split/train" and cfg.dataset.test == "data/figure/split/test"
    assert cfg.max_iters <= cfg.checkpoint_every  # one checkpoint, at the end
    assert [overrides for _, overrides in figure.RUNS] == [["--set", "alpha=0"], []]


def test_the_split_holds_out_the_generators_last_images_of_each_identity(tmp_path):
    aligned = tmp_path / "processed"
    for identity in ("0000001", "0000002"):
        (aligned / identity).mkdir(parents=True)
        for number in range(1, 41):
            if (identity, number) in (("0000001", 5), ("0000002", 35)):  # faces the detector missed
                continue
            (aligned / identity / f"{number:03d}.jpg").write_bytes(f"{identity} {number}".encode())
    (aligned / "landmarks.txt").write_text("not an identity\n")
    output = tmp_path / "split"
    (output / "train" / "stale").mkdir(parents=True)  # an older split is replaced
    assert figure.split_held_out(aligned, output) == (59, 19)
    assert sorted(p.name for p in (output / "train").iterdir()) == ["0000001", "0000002"]
    assert [p.name for p in sorted((output / "test" / "0000002").iterdir())][:5] == \
        ["031.jpg", "032.jpg", "033.jpg", "034.jpg", "036.jpg"]
    assert len(list((output / "train" / "0000001").iterdir())) == 29
    assert (output / "test" / "0000001" / "040.jpg").read_bytes() == b"0000001 40"

    (aligned / "0000001" / "extra.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="extra.jpg: not a toy training image name"):
        figure.split_held_out(aligned, output)
