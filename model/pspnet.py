"""PSPNet (Zhao et al., CVPR 2017): dilated ResNet, pyramid pooling, FCN head.

Module names mirror the official hszhao/semseg checkpoints (``ppm.features``,
``cls``, ``aux``) with the backbone nested under ``backbone``; the converters in
:mod:`model.convert` map both published layouts onto these names.

Tested by tests/model/test_pyramid_pooling.py, tests/model/test_backbone.py and
tests/model/test_export.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from model.resnet import DilatedResNet, DilationScheme


def adaptive_pool_matrix(size: int, bins: int) -> torch.Tensor:
    """``(bins, size)`` averaging matrix equal to 1-D ``adaptive_avg_pool``.

    Bin ``i`` covers ``[floor(i*size/bins), ceil((i+1)*size/bins))``, exactly as
    PyTorch defines adaptive pooling, also when ``size`` is not divisible by
    ``bins`` (a 360x480 tile gives a 45x60 feature map). Written as a matrix it
    exports to a plain MatMul that every ONNX runtime runs exactly.
    """
    m = torch.zeros(bins, size, dtype=torch.float64)
    for i in range(bins):
        start = (i * size) // bins
        end = -((-(i + 1) * size) // bins)
        m[i, start:end] = 1.0 / (end - start)
    return m


class PyramidPooling(nn.Module):
    """Pool to each bin size, 1x1 conv + BN + ReLU, upsample, concat after the input."""

    def __init__(self, in_channels: int, reduction_channels: int, bins: Sequence[int],
                 *, align_corners: bool) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.align_corners = align_corners
        # index 0 is the (parameter-free) pooling slot of the official Sequential
        self.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, reduction_channels, 1, bias=False),
                nn.BatchNorm2d(reduction_channels),
                nn.ReLU(inplace=True),
            )
            for b in self.bins
        )
        self._static_hw: tuple[int, int] | None = None

    def freeze_input_size(self, height: int, width: int) -> None:
        """Pool with constant matrices for this feature size (for ONNX export)."""
        self._static_hw = (height, width)
        for i, b in enumerate(self.bins):
            self.register_buffer(f"_pool_h{i}", adaptive_pool_matrix(height, b).float(), persistent=False)
            self.register_buffer(f"_pool_w{i}", adaptive_pool_matrix(width, b).float().t().contiguous(),
                                 persistent=False)

    def _pool(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if self._static_hw is None:
            pooled: torch.Tensor = self.features[index][0](x)
            return pooled
        if tuple(x.shape[-2:]) != self._static_hw:
            raise ValueError(f"pyramid pooling was frozen for {self._static_hw}, got {tuple(x.shape[-2:])}")
        ph: torch.Tensor = getattr(self, f"_pool_h{index}")
        pw: torch.Tensor = getattr(self, f"_pool_w{index}")
        return torch.matmul(torch.matmul(ph, x), pw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x]
        for i, branch in enumerate(self.features):
            y = branch[1:](self._pool(x, i))
            outs.append(F.interpolate(y, size=size, mode="bilinear", align_corners=self.align_corners))
        return torch.cat(outs, dim=1)


def _fcn_head(cin: int, mid: int, classes: int, dropout: float) -> nn.Sequential:
    # indices 0, 1, 4 hold the weights, as in the official checkpoints
    return nn.Sequential(
        nn.Conv2d(cin, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Dropout2d(dropout), nn.Conv2d(mid, classes, 1),
    )


@dataclass(frozen=True)
class PSPNetConfig:
    """Everything needed to rebuild a PSPNet; stored in checkpoints we write."""

    num_classes: int
    depth: int = 50
    stem: tuple[int, int, int] = (64, 64, 128)
    base_width: int = 64
    dilation_scheme: DilationScheme = "all"
    bins: tuple[int, ...] = (1, 2, 3, 6)
    ppm_channels: int | None = None  # default: a quarter of the backbone's output
    head_channels: int = 512
    aux_channels: int | None = 256  # None: no auxiliary head
    dropout: float = 0.1
    align_corners: bool = True
    extra: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> PSPNetConfig:
        d = dict(d)
        for key in ("stem", "bins"):
            if key in d:
                d[key] = tuple(d[key])  # type: ignore[call-overload]
        return cls(**d)  # type: ignore[arg-type]


class PSPNet(nn.Module):
    """Returns ``{"out": logits}`` at input resolution, plus ``"aux"`` in training."""

    def __init__(self, config: PSPNetConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = DilatedResNet(depth=config.depth, stem=config.stem,
                                      base_width=config.base_width,
                                      dilation_scheme=config.dilation_scheme)
        cin = self.backbone.out_channels
        red = config.ppm_channels or cin // len(config.bins)
        self.ppm = PyramidPooling(cin, red, config.bins, align_corners=config.align_corners)
        self.cls = _fcn_head(cin + red * len(config.bins), config.head_channels, config.num_classes,
                             config.dropout)
        self.aux = (None if config.aux_channels is None else
                    _fcn_head(self.backbone.layer3_channels, config.aux_channels, config.num_classes,
                              config.dropout))

    def _up(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.config.align_corners)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stride-8 main logits and the layer3 features (before any upsampling)."""
        c3, c4 = self.backbone(x)
        return self.cls(self.ppm(c4)), c3

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        logits, c3 = self.features(x)
        result = {"out": self._up(logits, size)}
        if self.training and self.aux is not None:
            result["aux"] = self._up(self.aux(c3), size)
        return result


def pspnet_resnet(*, depth: int, num_classes: int, aux: bool = True, **overrides: object) -> PSPNet:
    """The official layout (stem 64/64/128, all dilated, 512-wide head) at any depth."""
    expansion = 4 if depth >= 50 else 1
    defaults: dict[str, object] = {
        "head_channels": 512 if expansion == 4 else 128,
        "aux_channels": (256 if expansion == 4 else 64) if aux else None,
    }
    defaults.update(overrides)
    return PSPNet(PSPNetConfig(num_classes=num_classes, depth=depth, **defaults))  # type: ignore[arg-type]
