"""Dilated ResNet backbones for PSPNet (output stride 8, deep stem).

Two published layouts are expressible with the same modules:

* the official hszhao/semseg layout: stem 64/64/128, every block of layer3
  dilated 2 and of layer4 dilated 4 (``dilation_scheme="all"``);
* MMSegmentation's ResNetV1c: stem 32/32/64, the first block of layer3 and
  layer4 at half dilation (``dilation_scheme="contract"``).

Both put the stride on the 3x3 convolution ("ResNet v1.5"). Module names follow
the official checkpoints (``layer0`` .. ``layer4``, ``conv1``/``bn1`` ...), so an
official state dict loads with nothing but its ``module.`` prefix removed.

Tested by tests/model/test_backbone.py.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

DilationScheme = Literal["all", "contract"]

#: blocks per stage for each supported depth
STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions. As in MMSegmentation, only the first is dilated."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, *, stride: int = 1, dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, dilated) -> 1x1, expansion 4."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, *, stride: int = 1, dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class DilatedResNet(nn.Module):
    """ResNet with a deep stem and dilated layer3/layer4 (output stride 8).

    ``forward`` returns ``(layer3, layer4)`` features: layer3 feeds the
    auxiliary head, layer4 the pyramid pooling module.
    """

    def __init__(
        self, *, depth: int, stem: tuple[int, int, int] = (64, 64, 128),
        base_width: int = 64, dilation_scheme: DilationScheme = "all",
    ) -> None:
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(STAGE_BLOCKS)}")
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if depth < 50 else Bottleneck
        self.depth = depth
        # indices 0,1 / 3,4 / 6,7 match the official "layer0" Sequential
        self.layer0 = nn.Sequential(
            *_conv_bn_relu(3, stem[0], 2), *_conv_bn_relu(stem[0], stem[1], 1),
            *_conv_bn_relu(stem[1], stem[2], 1), nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.inplanes = stem[2]
        blocks = STAGE_BLOCKS[depth]
        w = base_width
        self.layer1 = self._make_layer(block, w, blocks[0], stride=1, dilation=1, first_dilation=1)
        self.layer2 = self._make_layer(block, w * 2, blocks[1], stride=2, dilation=1, first_dilation=1)
        contract = dilation_scheme == "contract"
        self.layer3 = self._make_layer(block, w * 4, blocks[2], stride=1, dilation=2,
                                       first_dilation=1 if contract else 2)
        self.layer4 = self._make_layer(block, w * 8, blocks[3], stride=1, dilation=4,
                                       first_dilation=2 if contract else 4)
        self.layer3_channels = w * 4 * block.expansion
        self.out_channels = w * 8 * block.expansion

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, count: int, *,
        stride: int, dilation: int, first_dilation: int,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.inplanes, planes, stride=stride,
                                         dilation=first_dilation, downsample=downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=dilation) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer2(self.layer1(self.layer0(x)))
        c3 = self.layer3(x)
        return c3, self.layer4(c3)
