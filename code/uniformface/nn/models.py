"""Backbones: SphereFace-4/10/20/36/64 (Liu et al., CVPR 2017; official `sphereface_model.prototxt`)
and the [2,3,5,2] net of UniformFace's Fig. 3 (Duan et al., CVPR 2019). Described in docs/DESIGN.md §2.
`build_model` also builds insightface's IResNet-18/34/50/100, defined in `iresnet.py`.

SphereFace stage: conv3x3 stride 2 pad 1 (with bias) -> PReLU, then n residual units
conv3x3 -> PReLU -> conv3x3 -> PReLU added to the unit's input (convs bias-free: Caffe froze their
biases at zero with lr_mult 0). After four stages (64, 128, 256, 512 channels) fc5 maps the flattened
512 x 7 x 6 map (7 x 7 for 112 x 112 input) to the embedding, with no activation.

Init as the prototxt: stage convs and fc5 use Caffe's "xavier" filler, U(-sqrt(3/fan_in), +sqrt(3/fan_in))
(not PyTorch's xavier_uniform_, which averages fan_in and fan_out); residual convs N(0, 0.01); biases 0;
PReLU slopes 0.25.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..base.registry import BACKBONES, MODEL_NAMES  # the names and their residual units, torch-free
from .iresnet import IResNet

STAGE_CHANNELS = (64, 128, 256, 512)
PRELU_INIT = 0.25
RESIDUAL_STD = 0.01


def normalize_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or float 0..255) images -> float32 (x - 127.5) / 128, as the prototxt's data layer
    (mean_value 127.5, scale 0.0078125)."""
    return (images.float() - 127.5) / 128.0


def caffe_xavier_(tensor: torch.Tensor) -> torch.Tensor:
    """Caffe's "xavier" filler: U(-a, a), a = sqrt(3 / fan_in), fan_in = in_channels * kernel area."""
    fan_in = tensor[0].numel()
    bound = math.sqrt(3.0 / fan_in)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def _opening_conv(in_ch: int, out_ch: int, stride: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=True)
    caffe_xavier_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _prelu(channels: int) -> nn.PReLU:
    return nn.PReLU(channels, init=PRELU_INIT)


class ResidualUnit(nn.Module):
    """conv3x3 -> PReLU -> conv3x3 -> PReLU, added to the input (prototxt `resX_Y` Eltwise SUM)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.prelu1 = _prelu(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.prelu2 = _prelu(channels)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, 0.0, RESIDUAL_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.prelu2(self.conv2(self.prelu1(self.conv1(x))))


def _conv_out(size: int, stride_two_layers: int) -> int:
    for _ in range(stride_two_layers):
        size = (size - 1) // 2 + 1  # 3x3, stride 2, pad 1
    return size


class FaceNet(nn.Module):
    """Four stages then fc5; `pool_stages=False` is SphereFace, True is the UniformFace figure's net."""

    def __init__(self, units: tuple[int, ...], embedding_size: int, input_size: tuple[int, int],
                 pool_stages: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        if pool_stages:
            layers += [_opening_conv(3, STAGE_CHANNELS[0], stride=1), _prelu(STAGE_CHANNELS[0])]
            in_ch = STAGE_CHANNELS[0]
        for out_ch, n_units in zip(STAGE_CHANNELS, units):
            if pool_stages:
                layers += [nn.MaxPool2d(2, 2), _opening_conv(in_ch, out_ch, stride=1)]
            else:
                layers.append(_opening_conv(in_ch, out_ch, stride=2))
            layers.append(_prelu(out_ch))
            layers += [ResidualUnit(out_ch) for _ in range(n_units)]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        height, width = input_size
        if pool_stages:  # MaxPool2d(2, 2) floors
            map_h, map_w = height // 16, width // 16
        else:
            map_h, map_w = _conv_out(height, 4), _conv_out(width, 4)
        if map_h < 1 or map_w < 1:
            raise ValueError(f"input_size {input_size} is too small for four downsampling stages")
        self.input_size = (height, width)
        self.fc5 = nn.Linear(STAGE_CHANNELS[-1] * map_h * map_w, embedding_size)
        caffe_xavier_(self.fc5.weight)
        nn.init.zeros_(self.fc5.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"expected images (B, 3, {self.input_size[0]}, {self.input_size[1]}), "
                             f"got {tuple(x.shape)}")
        return self.fc5(torch.flatten(self.features(x), 1))


def build_model(name: str, embedding_size: int = 512, input_size: tuple[int, int] = (112, 96)) -> nn.Module:
    """`sphereface4/10/20/36/64` (official prototxt; SphereFace-20 at 112x96/512-d has 22,666,944
    parameters), `uniformface`, or `iresnet18/34/50/100` (insightface's arcface_torch, `iresnet.py`;
    IResNet-50 at 112x112/512-d has 43,590,848 parameters, IResNet-100 65,156,160).

    `uniformface` is read off a figure (UniformFace, Fig. 3), not from released code: residual units
    [2, 3, 5, 2], a 3x3 stride-1 stem conv (3 -> 64) + PReLU, and each stage opening with a 2x2/2
    max-pool then a 3x3 stride-1 conv + PReLU (pool-then-conv is our reading), so that the last map is
    7x6 for 112x96 like SphereFace's; the rest (PReLU, bias-free residual convs, fc5, init) as SphereFace.
    """
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) != 2:
        raise ValueError(f"input_size must be (height, width), got {input_size}")
    if name not in BACKBONES:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    backbone = BACKBONES[name]
    if backbone.family == "iresnet":
        return IResNet(backbone.units, embedding_size, input_size)
    return FaceNet(backbone.units, embedding_size, input_size, pool_stages=backbone.pool_stages)
