"""IResNet-18/34/50/100, the backbones of insightface's arcface_torch, layer for layer as
`recognition/arcface_torch/backbones/iresnet.py` (deepinsight/insightface) defines them.

Stem: conv3x3 3 -> 64 (stride 1, no bias) -> BN -> PReLU. Four stages of 64, 128, 256, 512 channels; every
stage's first unit has stride 2. A unit (insightface's `IBasicBlock`) is
BN -> conv3x3 -> BN -> PReLU -> conv3x3 (the unit's stride) -> BN, added to its input, or to conv1x1 (stride,
no bias) -> BN of its input where the unit changes the channels or the size (every stage's first unit). No
activation after the sum. Head: BN2d -> flatten -> dropout (p 0 as arcface_torch trains) -> fc -> BatchNorm1d
whose scale is fixed at 1 (`requires_grad` False; its shift and running statistics still learn). Every BN has
eps 1e-5 and momentum 0.1 (PyTorch's defaults, as there). Module names are insightface's, so a state_dict of
theirs loads into ours (their pixels are (x - 127.5) / 127.5, ours / 128: 0.4% apart).

Init as that file: every conv N(0, 0.1); BN2d scale 1, shift 0; the features BN scale 1 (fixed), shift 0;
PReLU 0.25 a channel and fc PyTorch's default (its init loop leaves both alone); zero_init_residual off.

Precision: insightface's `fp16` flag runs the body under autocast and fc + features in float32 on
`x.float()`. Here the caller's autocast (the trainer's bf16) covers the body, and the head always leaves it
and runs in float32, so the float32 path and the mixed one share the same head arithmetic.

Input size: insightface fixes fc at 512 * 7 * 7 (112x112). Here fc reads the final map of the given
input_size, each stride-2 layer taking a side s to (s - 1) // 2 + 1: 7x7 at 112x112, 7x6 at 112x96.
"""
from __future__ import annotations

import torch
import torch.nn as nn

STAGE_CHANNELS = (64, 128, 256, 512)
CONV_STD = 0.1
BN_EPS = 1e-5


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the shortcut (`downsample` where the
    shape changes)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.bn1 = _bn(in_ch)
        self.conv1 = _conv3x3(in_ch, out_ch)
        self.bn2 = _bn(out_ch)
        self.prelu = nn.PReLU(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch, stride)
        self.bn3 = _bn(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), _bn(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x)))))) + shortcut


def _stride_two_side(size: int) -> int:
    return (size - 1) // 2 + 1  # conv3x3 stride 2 pad 1, and conv1x1 stride 2 pad 0, alike


class IResNet(nn.Module):
    """The stem, four stages of `units` IBasicBlocks, and the BN/dropout/fc/BN head (module docstring)."""

    def __init__(self, units: tuple[int, ...], embedding_size: int = 512, input_size: tuple[int, int] = (112, 112),
                 dropout: float = 0.0):
        super().__init__()
        height, width = (int(v) for v in input_size)
        if height < 1 or width < 1:
            raise ValueError(f"input_size must be positive (height, width), got {input_size}")
        if len(units) != len(STAGE_CHANNELS) or min(units) < 1:
            raise ValueError(f"IResNet needs at least one unit in each of four stages, got {tuple(units)}")
        self.input_size = (height, width)
        self.conv1 = _conv3x3(3, STAGE_CHANNELS[0])
        self.bn1 = _bn(STAGE_CHANNELS[0])
        self.prelu = nn.PReLU(STAGE_CHANNELS[0])
        in_ch, map_h, map_w = STAGE_CHANNELS[0], height, width
        for index, (out_ch, n_units) in enumerate(zip(STAGE_CHANNELS, units), start=1):
            blocks = [IBasicBlock(in_ch, out_ch, stride=2)] + [IBasicBlock(out_ch, out_ch) for _ in range(n_units - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            in_ch, map_h, map_w = out_ch, _stride_two_side(map_h), _stride_two_side(map_w)
        self.final_map = (map_h, map_w)
        self.bn2 = _bn(in_ch)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_ch * map_h * map_w, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, CONV_STD)
            elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.features.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != self.input_size:
            raise ValueError(f"expected images (B, 3, {self.input_size[0]}, {self.input_size[1]}), "
                             f"got {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        # insightface computes fc and the features BN in float32 under mixed precision (fp16=True); the cast
        # is to the head's own dtype so that a float64 copy stays float64
        with torch.autocast(x.device.type, enabled=False):
            return self.features(self.fc(x.to(self.fc.weight.dtype)))
