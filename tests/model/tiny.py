"""A PSPNet small enough to build, run and export in seconds.

Import it as ``from tests.model.tiny import build_tiny``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.pspnet import PSPNet, PSPNetConfig

#: depth 18 with 8 channels in layer1: every code path of the real network, a few MFLOPs
TINY_MODEL: dict[str, Any] = {"depth": 18, "base_width": 8, "stem": (8, 8, 16), "dilation_scheme": "contract",
                              "head_channels": 16, "aux_channels": 8, "align_corners": False}

# the official hszhao/semseg layout at toy widths: all blocks dilated, align_corners True
OFFICIAL: dict[str, Any] = {"dilation_scheme": "all", "align_corners": True}


def build_tiny(*, num_classes: int = 11, seed: int = 0, **overrides: Any) -> PSPNet:
    """Eval-mode PSPNet with random weights and non-trivial BatchNorm statistics
    (so a wrongly mapped or skipped BN changes the output)."""
    torch.manual_seed(seed)
    model = PSPNet(PSPNetConfig(num_classes=num_classes, **{**TINY_MODEL, **overrides}))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(1.0 + 0.5 * torch.rand(m.num_features, generator=g))
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    return model.eval()


def semseg_names(model: PSPNet) -> dict[str, torch.Tensor]:
    """hszhao/semseg's spelling: DataParallel prefix, backbone layers at the top level."""
    return {"module." + k.removeprefix("backbone."): v.clone() for k, v in model.state_dict().items()}


@dataclass(frozen=True)
class TinyArtifact:
    """What the ``tiny_artifact`` fixture (tests/model/conftest.py) made."""

    onnx_path: Path  # written by `pspnet-model convert`
    checkpoint: Path  # the native checkpoint it was converted from
    model: PSPNet  # the network that was saved (eval mode)
    stdout: str  # what the CLI printed
