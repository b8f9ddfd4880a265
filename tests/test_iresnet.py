"""nn/iresnet.py against insightface's recognition/arcface_torch/backbones/iresnet.py: the layers (read back
with torch.nn.functional in float64), the module names of its state_dict, the init, the input sizes, mixed
precision and channels_last, and training through the Trainer with every head and the uniform loss."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from uniformface.nn.iresnet import IBasicBlock, IResNet
from uniformface.nn.models import build_model

ROOT = Path(__file__).resolve().parents[1]
UNITS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3), "iresnet50": (3, 4, 14, 3),
         "iresnet100": (3, 13, 30, 3)}
WIDTHS = (64, 128, 256, 512)


def count(model):
    return sum(p.numel() for p in model.parameters())


def expected_parameter_count(units, embedding_size, map_hw):
    """insightface's layer list: stem conv + BN + PReLU; a unit's BN, conv3x3, BN, PReLU, conv3x3, BN and,
    opening a stage, conv1x1 + BN; head BN2d, fc (weights + bias), BatchNorm1d (scale and shift)."""
    total, in_ch = 3 * 64 * 9 + 2 * 64 + 64, 64
    for out_ch, n in zip(WIDTHS, units):
        for unit in range(n):
            unit_in = in_ch if unit == 0 else out_ch
            total += 2 * unit_in + unit_in * out_ch * 9 + 2 * out_ch + out_ch + out_ch * out_ch * 9 + 2 * out_ch
            if unit == 0:
                total += unit_in * out_ch + 2 * out_ch
        in_ch = out_ch
    return total + 2 * 512 + 512 * map_hw[0] * map_hw[1] * embedding_size + embedding_size + 2 * embedding_size


@pytest.mark.parametrize("name, size, parameters", [("iresnet18", (112, 112), 24_025_600),
                                                    ("iresnet34", (112, 112), 34_139_328),
                                                    ("iresnet50", (112, 112), 43_590_848),
                                                    ("iresnet100", (112, 112), 65_156_160),
                                                    ("iresnet50", (112, 96), 41_755_840)])
def test_the_documented_parameter_counts_and_a_512d_output(name, size, parameters):
    """docs/DESIGN.md §2.5's counts at 512-d, against insightface's layer list counted above."""
    model = build_model(name, embedding_size=512, input_size=size)
    assert count(model) == parameters == expected_parameter_count(UNITS[name], 512, (size[0] // 16, size[1] // 16))
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, *size)).shape == (2, 512)


@pytest.mark.parametrize("name", list(UNITS))
def test_every_depth_matches_its_layer_list(name):
    model = build_model(name, 128, (112, 112))
    assert isinstance(model, IResNet)
    assert count(model) == expected_parameter_count(UNITS[name], 128, (7, 7))
    for stage, (width, n) in enumerate(zip(WIDTHS, UNITS[name]), start=1):
        blocks = list(getattr(model, f"layer{stage}"))
        assert len(blocks) == n and all(isinstance(b, IBasicBlock) for b in blocks)
        # only a stage's first unit downsamples, in its second conv and its shortcut
        assert [b.conv2.stride for b in blocks] == [(2, 2)] + [(1, 1)] * (n - 1)
        assert [b.downsample is not None for b in blocks] == [True] + [False] * (n - 1)
        assert blocks[0].downsample[0].kernel_size == (1, 1) and blocks[0].downsample[0].stride == (2, 2)
        assert all(b.conv2.out_channels == width for b in blocks)
    assert all(c.bias is None for c in model.modules() if isinstance(c, nn.Conv2d))
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d))]
    assert all(m.eps == 1e-5 and m.momentum == 0.1 for m in norms)


def insightface_state_keys(units):
    """The state_dict keys insightface's IResNet has (its attribute names), written out from its layer list."""
    def bn(prefix):
        return [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    keys = ["conv1.weight", *bn("bn1"), "prelu.weight"]
    for stage, n in enumerate(units, start=1):
        for unit in range(n):
            p = f"layer{stage}.{unit}"
            keys += [*bn(f"{p}.bn1"), f"{p}.conv1.weight", *bn(f"{p}.bn2"), f"{p}.prelu.weight",
                     f"{p}.conv2.weight", *bn(f"{p}.bn3")]
            if unit == 0:
                keys += [f"{p}.downsample.0.weight", *bn(f"{p}.downsample.1")]
    return keys + [*bn("bn2"), "fc.weight", "fc.bias", *bn("features")]


def test_state_dict_names_are_insightfaces_so_their_weights_load():
    model = build_model("iresnet50", 512, (112, 112))
    assert sorted(model.state_dict()) == sorted(insightface_state_keys(UNITS["iresnet50"]))


def test_init_follows_insightface():
    torch.manual_seed(0)
    model = build_model("iresnet34", 512, (112, 112))
    for name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.weight.numel() >= 64 * 64:
            w = conv.weight.detach().double()
            assert abs(w.std().item() - 0.1) < 0.01 and abs(w.mean().item()) < 0.01, name
    bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d))]
    assert len(bns) == 2 + 3 * sum(UNITS["iresnet34"]) + 4 + 1
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    # the features BN's scale is fixed at 1; its shift learns
    assert not model.features.weight.requires_grad and model.features.bias.requires_grad
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["features.weight"]
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    assert len(prelus) == 1 + sum(UNITS["iresnet34"])
    assert all(p.weight.numel() > 1 and torch.all(p.weight == 0.25) for p in prelus)
    # fc keeps PyTorch's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as insightface's init loop skips it
    bound = 1 / math.sqrt(512 * 7 * 7)
    assert bound * 0.99 < model.fc.weight.abs().max() <= bound and model.fc.bias.abs().max() <= bound


def reference_forward(model, x, units, training):
    """insightface's graph in float64 functional calls, reading the module's tensors by insightface's names."""
    def bn(m, y):
        if training:
            return F.batch_norm(y, None, None, m.weight, m.bias, training=True, eps=1e-5)
        return F.batch_norm(y, m.running_mean, m.running_var, m.weight, m.bias, training=False, eps=1e-5)

    y = F.prelu(bn(model.bn1, F.conv2d(x, model.conv1.weight, padding=1)), model.prelu.weight)
    for stage, n in enumerate(units, start=1):
        for unit in range(n):
            b = getattr(model, f"layer{stage}")[unit]
            stride = 2 if unit == 0 else 1
            out = F.conv2d(bn(b.bn1, y), b.conv1.weight, padding=1)
            out = F.prelu(bn(b.bn2, out), b.prelu.weight)
            out = bn(b.bn3, F.conv2d(out, b.conv2.weight, stride=stride, padding=1))
            shortcut = y if unit else bn(b.downsample[1], F.conv2d(y, b.downsample[0].weight, stride=2))
            y = out + shortcut
    y = bn(model.bn2, y).flatten(1)
    return bn(model.features, F.linear(y, model.fc.weight, model.fc.bias))


def randomise(model):
    """Running statistics, scales, shifts and slopes away from their initial 0/1/0.25, so that each is read."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.weight.requires_grad:
                    m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
            elif isinstance(m, nn.PReLU):
                m.weight.uniform_(0.1, 0.4)
            elif isinstance(m, nn.Conv2d):
                m.weight.mul_(0.3)  # keep the residual sums from growing over 8 units


@pytest.mark.slow
@pytest.mark.parametrize("training", [False, True], ids=["eval-running-stats", "train-batch-stats"])
def test_forward_is_insightfaces_graph_in_float64(device, training):
    torch.manual_seed(3)
    # 40x32 takes every stride-2 step through an odd side (5x4 -> 3x2), where conv3x3 and conv1x1 must agree
    model = build_model("iresnet18", 64, (40, 32)).double()
    randomise(model)
    model.train(training)
    x = torch.randn(3, 3, 40, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = reference_forward(model, x, UNITS["iresnet18"], training)
        got = model.to(device)(x.to(device)).cpu()
    assert got.dtype == torch.float64 and got.shape == (3, 64)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_112x96_input_reads_the_7x6_final_map():
    model = build_model("iresnet18", 512, (112, 96))
    assert model.fc.in_features == 512 * 7 * 6 and model.final_map == (7, 6)
    assert count(model) == expected_parameter_count(UNITS["iresnet18"], 512, (7, 6))
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 112, 96)).shape == (2, 512)


def test_an_input_of_another_size_is_refused_naming_the_expected_one():
    model = build_model("iresnet18", 512, (112, 96))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 112, 96\), got \(1, 3, 112, 112\)"):
        model(torch.randn(1, 3, 112, 112))
    with pytest.raises(ValueError, match="at least one unit in each of four stages"):
        IResNet((2, 2, 0, 2))


def test_cpu_bf16_autocast_runs_the_body_in_bf16_and_the_head_in_float32():
    """The trainer's autocast (bf16) over the body; fc and the features BN in float32, as insightface's
    fp16 path; channels_last changes nothing but the memory layout. In training mode: at its init (conv std
    0.1) the net relies on the batch statistics, and its running ones (0 and 1) would let the maps grow ~2x a
    conv."""
    torch.manual_seed(4)
    model = build_model("iresnet18", 128, (56, 48)).train()  # a small input keeps the CPU's bf16 convs quick
    x = torch.randn(4, 3, 56, 48)
    seen = {}
    model.layer4.register_forward_hook(lambda m, i, out: seen.update(body=out.dtype))
    model.fc.register_forward_hook(lambda m, i, out: seen.update(fc_in=i[0].dtype, fc_out=out.dtype))
    with torch.no_grad():
        expected = model(x)
        assert seen == {"body": torch.float32, "fc_in": torch.float32, "fc_out": torch.float32}
        model = model.to(memory_format=torch.channels_last)
        x_last = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x_last), expected, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x_last)
    assert seen == {"body": torch.bfloat16, "fc_in": torch.float32, "fc_out": torch.float32}
    assert got.dtype == torch.float32
    cosine = F.cosine_similarity(got.double(), expected.double())
    assert cosine.min().item() > 0.99, cosine


def test_cuda_bf16_channels_last_forward_follows_the_cpu_float32_one(cuda):
    """What training on a GPU runs (config defaults amp + channels_last) against the CPU in float32."""
    torch.manual_seed(5)
    model = build_model("iresnet50", 512, (112, 112)).train()  # batch statistics, as in the test above
    x = torch.randn(4, 3, 112, 112)
    with torch.no_grad():
        expected = model(x).double()
        model = model.to(cuda, memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = model(x.to(cuda).contiguous(memory_format=torch.channels_last))
    assert got.dtype == torch.float32
    cosine = F.cosine_similarity(got.cpu().double(), expected)
    assert cosine.min().item() > 0.99, cosine


@pytest.mark.slow
@pytest.mark.parametrize("head", ["sphereface", "cosface", "arcface"])
def test_trains_with_every_head_and_the_uniform_loss(tmp_path, aligned_tree, head):
    """One iteration through the config and train(): finite losses, a positive uniform loss, every
    backbone BN shift moved from its 0, the fixed features scale still 1, the weights file rebuilt."""
    from uniformface.base.config import load_config
    from uniformface.eval.trained_network import load_backbone
    from uniformface.train.trainer import train

    cfg = load_config(ROOT / "code" / "configs" / "toy.yaml", [
        f"dataset.train={aligned_tree}", "dataset.exclude_identities=[]", "model_name=iresnet18", "emb_dim=32",
        "batch_size=4", "num_workers=0", "max_iters=1", "checkpoint_every=1", "log_every=1", "milestones=[]",
        "warmup_iters=0", "lr=0.05", "device=cpu", "deterministic=true", f"loss.name={head}", "alpha=1.0"])
    weights = train(cfg, tmp_path / "run", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [1]
    assert all(math.isfinite(line["loss"]) and math.isfinite(line["cross_entropy"]) for line in lines)
    assert all(line["uniform_loss"] > 0 for line in lines)
    model, spec, _ = load_backbone(weights)
    assert isinstance(model, IResNet) and spec["model_name"] == "iresnet18"
    assert torch.all(model.features.weight == 1)
    shifts = {name: p for name, p in model.named_parameters() if name.endswith("bias") and "bn" in name}
    assert shifts and all(torch.count_nonzero(p) > 0 for p in shifts.values()), \
        [name for name, p in shifts.items() if torch.count_nonzero(p) == 0]
    assert torch.count_nonzero(model.features.bias) > 0
    assert model(torch.zeros(2, 3, 112, 96)).shape == (2, 32)
