"""divergence.py: a loss noted on the device at the step and named at the next check by its own iteration;
the state's non-finite part named; the checkpoint to continue from put back when the latest holds the very
weights whose loss went non-finite; weights whose features overflow found. (Runs that diverge end to end:
test_train.py.)"""
import math

import pytest
import torch

from uniformface.base.config import load_config
from uniformface.train.build import build_parts
from uniformface.train.checkpoint import Checkpoints
from uniformface.train.divergence import DivergenceWatch, TrainingDiverged, features_finite, non_finite_part

CPU = torch.device("cpu")


def watch_over(folder, saved=()):
    """A watch whose checkpoints (real files in `folder`) were saved at the iterations `saved`, in order."""
    checkpoints = Checkpoints(folder / "checkpoint.pt", folder / "checkpoint.prev.pt", "--logdir log --run_name r")
    for iteration in saved:
        checkpoints.save({"iteration": iteration}, iteration)
    return DivergenceWatch(checkpoints, lr=0.1, device=CPU, writes=True)


def loss_of(value):
    return torch.tensor(value), torch.tensor(value), torch.tensor(0.25)  # loss, cross-entropy, uniform


def test_the_first_non_finite_step_is_named_at_the_next_check_with_the_checkpoint_before_it(tmp_path):
    """Iterations 5 and 6 not finite, found at the check of iteration 7: iteration 5 is named, and since the
    checkpoint of iteration 4 holds the weights whose forward pass gave it, the one of 2 is put back."""
    watch = watch_over(tmp_path, saved=(2, 4))
    for iteration, value in ((3, 1.0), (4, 2.0), (5, math.nan), (6, math.inf), (7, 1.0)):
        watch.note_loss(iteration, *loss_of(value), check_now=False)
    with pytest.raises(TrainingDiverged) as caught:
        watch.raise_if_noted(7)
    message = str(caught.value)
    assert message.startswith("loss is not finite at iteration 5 (cross-entropy nan, uniform 0.25; found at "
                              "iteration 7, the next check); stopped, no weights file written.")
    assert f"The last good checkpoint is {tmp_path / 'checkpoint.pt'} (iteration 2, finite weights)" in message
    assert "train.py --logdir log --run_name r --resume --set lr=0.01" in message
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["iteration"] == 2
    assert not (tmp_path / "checkpoint.prev.pt").exists()


def test_check_every_step_stops_at_the_step_itself(tmp_path):
    watch = watch_over(tmp_path, saved=(0,))
    watch.note_loss(1, *loss_of(3.0), check_now=True)
    watch.raise_if_noted(1)  # nothing noted
    with pytest.raises(TrainingDiverged, match=r"^loss is not finite at iteration 2 \(cross-entropy inf, uniform "
                                               r"0.25\); stopped, .* \(iteration 0, finite weights\)"):
        watch.note_loss(2, *loss_of(math.inf), check_now=True)


def test_a_divergence_of_the_initial_weights_says_no_learning_rate_helps(tmp_path):
    watch = watch_over(tmp_path, saved=(0,))
    watch.note_loss(1, *loss_of(math.nan), check_now=False)
    with pytest.raises(TrainingDiverged, match="The initial weights already give a non-finite loss"):
        watch.raise_if_noted(1)


@pytest.mark.parametrize("where, named", [
    ("weights", "the weights (head.weight)"), ("centers", "the class centers (centers)"),
    ("momentum", "the optimizer's momentum buffers (head.weight.momentum_buffer)")])
def test_the_part_of_the_state_that_is_not_finite_is_named(where, named):
    """In one line: a momentum buffer by its parameter's name (it was named by the parameter's values)."""
    cfg = load_config(None, ["model_name=sphereface4", "emb_dim=8", "device=cpu"])
    parts = build_parts(cfg, 3, CPU)
    head_weight = parts.model.head.weight
    parts.optimizer.state[head_weight]["momentum_buffer"] = torch.zeros_like(head_weight)
    assert non_finite_part(parts.model, parts.centers, parts.optimizer, CPU) is None
    tensor = {"weights": head_weight, "centers": parts.centers.centers,
              "momentum": parts.optimizer.state[head_weight]["momentum_buffer"]}[where]
    with torch.no_grad():
        tensor[1, 2] = math.inf
    assert non_finite_part(parts.model, parts.centers, parts.optimizer, CPU) == named


def test_features_of_finite_but_huge_weights_are_found_not_finite():
    """Weights x 1e27 (what lr 1e30 leaves after one step) are finite, their features overflow; the
    backbone's mode is left as it was."""
    from uniformface.nn.models import build_model

    backbone = build_model("sphereface4", 8)
    images = torch.randint(0, 256, (2, 3, 112, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert features_finite(backbone, images, CPU) and backbone.training
    with torch.no_grad():
        for p in backbone.parameters():
            p.mul_(1e27)
    assert all(bool(torch.isfinite(p).all()) for p in backbone.parameters())
    backbone.eval()
    assert not features_finite(backbone, images, CPU) and not backbone.training
