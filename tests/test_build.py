"""build.py: what a run trains, built from its config: the official prototxt's multipliers, and the network,
centers and solver that the config names."""
import pytest
import torch

from conftest import denormals_flushed
from uniformface.base.config import load_config
from uniformface.nn.centers import ClassCenters, WeightCenters
from uniformface.nn.heads import ASoftmax, CosFace
from uniformface.train.build import build_parts, flush_denormals_on_cpu, parameter_groups, wrap_for_ranks


def test_caffe_parameter_multipliers():
    """sphereface_model.prototxt: conv/fc biases lr_mult 2, decay_mult 0; weights and PReLU slopes 1, 1."""
    from uniformface.nn.models import build_model

    model = build_model("sphereface20")
    groups = parameter_groups(model, 5e-4)
    by_id = {id(p): g for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        g = by_id[id(p)]
        expected = (2.0, 0.0) if name.endswith(".bias") else (1.0, 5e-4)
        assert (g["lr_mult"], g["weight_decay"]) == expected, name
    assert sum(p.numel() for g in groups for p in g["params"]) == 22_666_944
    n_bias = sum(p.numel() for g in groups if g["lr_mult"] == 2 for p in g["params"])
    assert n_bias == 64 + 128 + 256 + 512 + 512  # four stage convs + fc5


def test_an_iresnet_trains_as_arcface_torch_one_group_with_decay_on_everything():
    """train_v2.py: SGD over the backbone's and the class weights' parameters, one lr and weight decay;
    SphereFace's Caffe multipliers are not insightface's."""
    cfg = load_config(None, ["model_name=iresnet18", "emb_dim=16", "input_size=[112,112]", "device=cpu",
                             "lr=0.1", "weight_decay=0.0005"])
    parts = build_parts(cfg, 5, torch.device("cpu"))
    (group,) = parts.optimizer.param_groups
    assert (group["lr"], group["weight_decay"], group["lr_mult"]) == (0.1, 0.0005, 1.0)
    assert {id(p) for p in group["params"]} == {id(p) for p in parts.model.parameters()}
    assert any(name.endswith(".bias") for name, _ in parts.model.named_parameters())  # BN shifts, fc bias


@pytest.mark.parametrize("setting", [["center_mode=feature", "loss.name=sphereface"],
                                     ["center_mode=weight", "loss.name=cosface", "compute_in_batch=true"]],
                         ids=["feature-sphereface", "weight-cosface-batch"])
def test_the_parts_are_those_the_config_names(setting):
    cfg = load_config(None, ["model_name=sphereface4", "emb_dim=16", "device=cpu", "lr=0.3", "momentum=0.8",
                             "weight_decay=0.001", *setting])
    parts = build_parts(cfg, 5, torch.device("cpu"))
    head = parts.model.head
    assert isinstance(head, ASoftmax if cfg.loss.name == "sphereface" else CosFace)
    assert tuple(head.weight.shape) == (5, 16) and parts.model.backbone(torch.zeros(2, 3, 112, 96)).shape == (2, 16)
    if cfg.center_mode == "weight":
        assert isinstance(parts.centers, WeightCenters) and parts.centers.scope == "batch"
    else:
        assert isinstance(parts.centers, ClassCenters) and tuple(parts.centers.centers.shape) == (5, 16)
    assert [(g["lr"], g["momentum"], g["weight_decay"]) for g in parts.optimizer.param_groups] == \
           [(0.3, 0.8, 0.001), (0.3, 0.8, 0.0)]
    assert {id(p) for g in parts.optimizer.param_groups for p in g["params"]} == \
           {id(p) for p in parts.model.parameters()}
    wrap_for_ranks(parts, cfg, world_size=1)
    assert parts.net is parts.model  # one process, not compiled: the model itself


def test_a_cpu_run_flushes_denormal_floats_and_a_gpu_run_leaves_the_cpu_setting():
    """Kept, a denormal is handled in microcode on x86; flushed, it reads 0 (conftest.denormals_flushed)."""
    try:
        torch.set_flush_denormal(False)
        flush_denormals_on_cpu(torch.device("cuda"))
        assert not denormals_flushed()
        flush_denormals_on_cpu(torch.device("cpu"))
        assert denormals_flushed()
        assert torch.tensor([2e-38]).mul(1.0).item() == pytest.approx(2e-38)  # normal numbers untouched
    finally:
        torch.set_flush_denormal(False)
