"""Backbones against the official SphereFace prototxt (sphereface_model.prototxt), and build_model's IResNets
(their layers against insightface's iresnet.py: test_iresnet.py)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from uniformface.nn.models import build_model, normalize_pixels

UNITS = {"sphereface4": [0, 0, 0, 0], "sphereface10": [0, 1, 2, 0], "sphereface20": [1, 2, 4, 1],
         "sphereface36": [2, 4, 8, 2], "sphereface64": [3, 8, 16, 3]}
CHANNELS = [64, 128, 256, 512]


def expected_parameter_count(units, embedding_size, map_hw, stem=False):
    """Counted from the prototxt's layer list: opening conv (weights + bias) and its PReLU, two bias-free
    3x3 convs and two PReLUs per residual unit, fc5 (weights + bias)."""
    total, in_ch = 0, 3
    if stem:
        total += 3 * 64 * 9 + 64 + 64
        in_ch = 64
    for out_ch, n in zip(CHANNELS, units):
        total += in_ch * out_ch * 9 + out_ch + out_ch
        total += n * 2 * (out_ch * out_ch * 9 + out_ch)
        in_ch = out_ch
    return total + 512 * map_hw[0] * map_hw[1] * embedding_size + embedding_size


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, size, parameters", [("sphereface20", (112, 96), 22_666_944),
                                                    ("sphereface20", (112, 112), 24_501_952),
                                                    ("sphereface4", (112, 96), 12_562_496)])
def test_the_documented_parameter_counts(name, size, parameters):
    """docs/DESIGN.md §2.1's counts at 512-d: built and counted from the prototxt's layer list."""
    model = build_model(name, 512, size)
    assert count(model) == parameters == expected_parameter_count(UNITS[name], 512, (size[0] // 16, size[1] // 16))


@pytest.mark.parametrize("name", list(UNITS))
def test_every_depth_matches_its_unit_table(name):
    model = build_model(name, 128, (112, 96))
    assert count(model) == expected_parameter_count(UNITS[name], 128, (7, 6))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 + 2 * sum(UNITS[name])
    assert sum(c.stride == (2, 2) for c in convs) == 4


def test_init_follows_caffe_fillers():
    torch.manual_seed(0)
    model = build_model("sphereface20")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    for conv in convs:
        w = conv.weight.detach().double()
        if conv.stride == (2, 2):
            fan_in = conv.in_channels * 9
            bound = math.sqrt(3.0 / fan_in)
            assert w.abs().max() <= bound
            assert w.abs().max() > 0.97 * bound  # the whole range is used, not a narrower one
            assert abs(w.std().item() - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3)
            assert conv.bias is not None and torch.count_nonzero(conv.bias) == 0
        else:
            assert conv.bias is None  # residual convs carry no bias
            assert abs(w.std().item() - 0.01) < 0.001
            assert abs(w.mean().item()) < 0.001
    fc5 = model.fc5
    bound = math.sqrt(3.0 / (512 * 7 * 6))
    assert fc5.weight.abs().max() <= bound and fc5.weight.abs().max() > 0.99 * bound
    assert torch.count_nonzero(fc5.bias) == 0
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    assert len(prelus) == len(convs)  # one PReLU after every conv
    for prelu in prelus:
        assert prelu.weight.numel() > 1  # one slope per channel
        assert torch.all(prelu.weight == 0.25)


def test_112x112_input_gives_a_7x7_map():
    model = build_model("sphereface20", 256, (112, 112))
    assert model.fc5.in_features == 512 * 7 * 7
    out = model(torch.randn(2, 3, 112, 112))
    assert out.shape == (2, 256)


def reference_forward(model, x, units):
    """The prototxt's graph written with functional ops, reading the model's tensors in creation order."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]
    ci = 0
    for n in units:
        x = F.prelu(F.conv2d(x, convs[ci].weight, convs[ci].bias, stride=2, padding=1), prelus[ci].weight)
        ci += 1
        for _ in range(n):
            y = F.prelu(F.conv2d(x, convs[ci].weight, None, padding=1), prelus[ci].weight)
            y = F.prelu(F.conv2d(y, convs[ci + 1].weight, None, padding=1), prelus[ci + 1].weight)
            x = x + y
            ci += 2
    return F.linear(x.flatten(1), model.fc5.weight, model.fc5.bias)


def test_forward_is_the_prototxt_graph(device):
    torch.manual_seed(1)
    model = build_model("sphereface10", 64).double()
    with torch.no_grad():  # make the residual branches matter, and the PReLUs distinguishable
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.stride == (1, 1):
                m.weight.normal_(0, 0.05)
            if isinstance(m, nn.PReLU):
                m.weight.uniform_(0.1, 0.4)
    x = torch.randn(2, 3, 112, 96, dtype=torch.float64)
    expected = reference_forward(model, x, UNITS["sphereface10"])
    torch.testing.assert_close(model.to(device)(x.to(device)).cpu(), expected, rtol=1e-10, atol=1e-12)


def test_cuda_bf16_channels_last_forward_follows_the_cpu_float32_one(cuda):
    """What training on a GPU runs (config defaults amp + channels_last) against the CPU in float32."""
    torch.manual_seed(2)
    model = build_model("sphereface20", 512).eval()
    x = torch.randn(4, 3, 112, 96)
    with torch.no_grad():
        expected = model(x).double()
        model = model.to(cuda, memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            got = model(x.to(cuda).contiguous(memory_format=torch.channels_last)).float().cpu().double()
    cosine = (got * expected).sum(1) / (got.norm(dim=1) * expected.norm(dim=1))
    assert cosine.min().item() > 0.99, cosine  # bf16 keeps ~3 digits per operation over 20 layers


def test_uniformface_net_is_the_figure_reading():
    model = build_model("uniformface", 512, (112, 96))
    assert count(model) == expected_parameter_count([2, 3, 5, 2], 512, (7, 6), stem=True)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    assert all(c.stride == (1, 1) for c in model.modules() if isinstance(c, nn.Conv2d))
    assert model(torch.randn(1, 3, 112, 96)).shape == (1, 512)
    assert build_model("uniformface", 512, (112, 112))(torch.randn(1, 3, 112, 112)).shape == (1, 512)
    assert "figure" in build_model.__doc__.lower()


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="sphereface20.*uniformface, iresnet18, iresnet34, iresnet50, iresnet100$"):
        build_model("resnet50")


def test_wrong_input_size_is_refused_clearly():
    model = build_model("sphereface4")
    with pytest.raises(ValueError, match="112, 96"):
        model(torch.randn(1, 3, 112, 112))


def test_normalize_pixels():
    pixels = torch.tensor([0, 127, 128, 255], dtype=torch.uint8)
    expected = torch.tensor([(v - 127.5) / 128 for v in (0, 127, 128, 255)])
    out = normalize_pixels(pixels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
