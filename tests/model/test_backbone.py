"""Backbone output strides, shapes and dilations for every depth and both layouts."""

from __future__ import annotations

import pytest
import torch

from model.export import stride8_size
from model.pspnet import PSPNet, PSPNetConfig
from model.resnet import BasicBlock, Bottleneck, DilatedResNet

DEPTHS = (18, 34, 50, 101)
SCHEMES = ("all", "contract")


def _dilated_conv(block: torch.nn.Module) -> torch.nn.Conv2d:
    """The 3x3 convolution that carries stride and dilation."""
    conv = block.conv2 if isinstance(block, Bottleneck) else block.conv1
    assert isinstance(conv, torch.nn.Conv2d)
    return conv


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("depth", DEPTHS)
def test_output_stride_8(depth: int, scheme: str) -> None:
    net = DilatedResNet(depth=depth, stem=(8, 8, 16), base_width=8, dilation_scheme=scheme).eval()  # type: ignore[arg-type]
    expansion = 4 if depth >= 50 else 1
    for size in ((67, 45), (64, 64)):
        with torch.no_grad():
            c3, c4 = net(torch.zeros(1, 3, *size))
        assert tuple(c3.shape) == (1, 8 * 4 * expansion, *stride8_size(size))
        assert tuple(c4.shape) == (1, 8 * 8 * expansion, *stride8_size(size))
    assert stride8_size((67, 45)) == (9, 6)  # ceil(67/8), ceil(45/8)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("depth", DEPTHS)
def test_dilation_layout(depth: int, scheme: str) -> None:
    net = DilatedResNet(depth=depth, stem=(8, 8, 16), base_width=8, dilation_scheme=scheme)  # type: ignore[arg-type]
    block = Bottleneck if depth >= 50 else BasicBlock
    assert all(isinstance(b, block) for b in net.layer1)
    # the stride sits on the 3x3 convolution of layer2's first block ("v1.5"); layers 3 and 4 keep the size
    assert _dilated_conv(net.layer2[0]).stride == (2, 2)
    assert all(_dilated_conv(b).stride == (1, 1) for layer in (net.layer3, net.layer4) for b in layer)
    # official: every block of layer3 at 2, layer4 at 4; MMSeg: the first block at half that
    first3, first4 = (1, 2) if scheme == "contract" else (2, 4)
    assert _dilated_conv(net.layer3[0]).dilation == (first3, first3)
    assert _dilated_conv(net.layer4[0]).dilation == (first4, first4)
    assert all(_dilated_conv(b).dilation == (2, 2) for b in list(net.layer3)[1:])
    assert all(_dilated_conv(b).dilation == (4, 4) for b in list(net.layer4)[1:])
    for conv in (_dilated_conv(b) for layer in (net.layer3, net.layer4) for b in layer):
        assert conv.padding == conv.dilation  # 'same' size for a 3x3


@pytest.mark.parametrize("align_corners", [True, False])
def test_pspnet_logits_at_input_size(align_corners: bool) -> None:
    model = PSPNet(PSPNetConfig(num_classes=5, depth=18, stem=(8, 8, 16), base_width=8, head_channels=16,
                                aux_channels=8, align_corners=align_corners))
    x = torch.rand(2, 3, 50, 75)
    model.train()
    out = model(x)
    assert tuple(out["out"].shape) == tuple(out["aux"].shape) == (2, 5, 50, 75)
    model.eval()
    with torch.no_grad():
        assert set(model(x)) == {"out"}
        logits, c3 = model.features(x)
    assert tuple(logits.shape) == (2, 5, 7, 10) and tuple(c3.shape[-2:]) == (7, 10)
