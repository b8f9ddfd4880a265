"""step.py: one training iteration: the learning-rate schedule, and the solver's update recomputed in float64
from each step's gradients. (That a step reads nothing back from the device is tested on the trainer's
loop, test_trainer.py.)"""
import math

import pytest
import torch

from uniformface.base.config import load_config
from uniformface.train.step import learning_rate
from uniformface.train.trainer import Trainer


def test_learning_rate_schedule_warmup_and_steps():
    cfg = load_config(None, ["lr=0.1", "milestones=[16000, 24000]", "warmup_iters=0"])
    assert learning_rate(cfg, 0) == 0.1 and learning_rate(cfg, 15999) == 0.1
    assert math.isclose(learning_rate(cfg, 16000), 0.01) and math.isclose(learning_rate(cfg, 24000), 0.001)
    cfg = load_config(None, ["warmup_iters=10"])
    assert math.isclose(learning_rate(cfg, 0), 0.01) and math.isclose(learning_rate(cfg, 9), 0.1)


@pytest.mark.slow
def test_default_solver_steps_are_sgd_with_momentum_and_decay_in_float64(tmp_path, aligned_tree):
    """The solver defaults (docs/DESIGN.md §5.2, the official solver): lr 0.1 x 0.1 at 16,000 and 24,000, and
    two steps of a default-config Trainer move every parameter as SGD with momentum 0.9 and weight decay 5e-4
    (biases: lr x 2, no decay), recomputed in float64 from each step's gradients."""
    overrides = [f"dataset.train={aligned_tree}", "dataset.exclude_identities=[]", "model_name=sphereface4",
                 "emb_dim=16", "batch_size=8", "num_workers=0", "device=cpu", "deterministic=true"]
    cfg = load_config(None, overrides)
    for iteration, drops in ((0, 0), (15999, 0), (16000, 1), (23999, 1), (24000, 2), (27999, 2)):
        assert learning_rate(cfg, iteration) == pytest.approx(0.1 * 0.1 ** drops, rel=1e-12), iteration
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    try:
        params = dict(trainer.model.named_parameters())
        biases = {name for name in params if name.endswith(".bias")}
        # the head renormalises its rows in place at each training forward: its step starts from those
        before = {}
        trainer.model.head.register_forward_hook(
            lambda mod, inputs, out: before.update({"head.weight": mod.weight.detach().double().clone()}))
        momentum = {}
        batches = iter(trainer._loader())
        for _ in range(2):
            before.update({name: p.detach().double().clone() for name, p in params.items() if name != "head.weight"})
            images, labels, _ = next(batches)
            trainer.step(images, labels)
            for name, p in params.items():
                lr, decay = (0.2, 0.0) if name in biases else (0.1, 5e-4)
                d_p = p.grad.double() + decay * before[name]
                momentum[name] = d_p if name not in momentum else 0.9 * momentum[name] + d_p
                expected = before[name] - lr * momentum[name]
                torch.testing.assert_close(p.detach().double(), expected, rtol=1e-5, atol=1e-7, msg=name)
    finally:
        trainer.close()
