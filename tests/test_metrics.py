"""metrics.py: what a run logs: the log point's figures of the centers and weights (one sweep, equal to the
separate functions to the bit), and metrics.jsonl cut back to a checkpoint at a resume. (The lines and
TensorBoard events of real runs are tested in test_trainer.py.)"""
import json

import pytest
import torch

from uniformface.base.config import load_config
from uniformface.train.build import build_parts
from uniformface.train.metrics import truncate_jsonl


@pytest.mark.parametrize("center_mode", ["feature", "weight"])
def test_log_point_figures_are_the_separate_sweeps_to_the_bit(center_mode):
    """The log point computes the centers' distance and angle in one sweep (and, when the centers are the
    head's weights, their angle once): the figures are those of the separate functions."""
    from uniformface.nn.centers import ClassCenters, mean_min_angle_tensor, mean_min_distance
    from uniformface.train.metrics import center_matrix, log_figures

    cfg = load_config(None, ["model_name=sphereface4", "emb_dim=8", "device=cpu", f"center_mode={center_mode}"])
    parts = build_parts(cfg, 4, torch.device("cpu"))
    g = torch.Generator().manual_seed(4)
    norms = torch.tensor([[0.5], [3.0], [1.0], [8.0]])  # unequal: nearest by distance is not by angle
    with torch.no_grad():
        parts.model.head.weight.copy_(torch.randn(4, 8, generator=g) * norms)
        if isinstance(parts.centers, ClassCenters):
            parts.centers.centers.copy_(torch.randn(4, 8, generator=g) * norms.flip(0))
            parts.centers.initialized.fill_(True)
    centers = center_matrix(parts.centers, parts.model.head)
    figures = log_figures(parts.model.head, parts.centers)
    assert torch.equal(figures["mean_min_center_distance"], mean_min_distance(centers))
    assert torch.equal(figures["mean_min_center_angle"], mean_min_angle_tensor(centers))
    assert torch.equal(figures["mean_min_weight_angle"], mean_min_angle_tensor(parts.model.head.weight.detach()))


def test_a_resume_drops_the_lines_past_its_checkpoint_and_the_ones_a_kill_cut(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"iteration": 2, "loss": 1.5}, {"iteration": 4, "lfw_accuracy": 0.5}, {"iteration": "4"},
             {"iteration": 6, "loss": 1.2}]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '\n{"iteration": 8, "lo')
    warnings = truncate_jsonl(path, 4)
    assert [json.loads(line) for line in path.read_text().splitlines()] == lines[:2]
    assert [w.split(": line ")[1].split(" ")[0] for w in warnings] == ["3", "6"]
    assert all(w.startswith(f"warning: {path}: line ") and w.endswith("dropped") for w in warnings)
    assert truncate_jsonl(tmp_path / "none.jsonl", 4) == [] and not (tmp_path / "none.jsonl").exists()
