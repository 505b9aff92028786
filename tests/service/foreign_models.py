"""Two real architectures besides PSPNet, built from Hugging Face ``transformers`` code at test time.

Tiny configurations with random weights (seeded), exported with ``torch.onnx.export`` so that the
graph returns the logits tensor alone; nothing is committed. Both take ``pixel_values`` NCHW
float32, normalised outside the graph, and return logits at a stride:

- SegFormer (``SegformerForSemanticSegmentation``: Mix Transformer encoder, all-MLP decoder),
  logits at stride 4;
- MobileViT with its DeepLabV3 head (``MobileViTForSemanticSegmentation``: the ASPP), built with
  ``output_stride=8`` (dilated last stages), logits at stride 8.

:func:`reference_labels` is the reference the served labels are held to: the library's own
forward pass on the same windows (``service.protocol.plan.plan_tiles``), each window's logits
resized to the window with ``torch.nn.functional.interpolate``, then the float64 official stitch
(tests/service/stitch_oracle.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    MobileViTConfig,
    MobileViTForSemanticSegmentation,
    SegformerConfig,
    SegformerForSemanticSegmentation,
)

from service.contract.artifact import ArtifactMeta, Mode
from service.protocol.plan import plan_tiles
from tests.service.stitch_oracle import stitch_float64

TILE = (64, 64)
CLASSES = 5
INPUT, OUTPUT = "pixel_values", "logits"


def segformer() -> torch.nn.Module:
    torch.manual_seed(0)
    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 1],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=CLASSES,
    )
    return SegformerForSemanticSegmentation(config).eval()


def mobilevit_deeplab() -> torch.nn.Module:
    torch.manual_seed(1)
    config = MobileViTConfig(
        image_size=TILE[0],
        hidden_sizes=[16, 16, 16],
        neck_hidden_sizes=[8, 8, 8, 16, 16, 16, 32],
        num_attention_heads=1,
        mlp_ratio=2.0,
        aspp_out_channels=16,
        output_stride=8,
        num_labels=CLASSES,
    )
    model = MobileViTForSemanticSegmentation(config).eval()
    # the library's initialisation (weights of std 0.02, batch-norm scales too) is meant for
    # training: untrained, the activations vanish layer by layer and every pixel gets one class.
    # He-style weights and unit batch-norm scales keep them alive, so the labels vary.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=(2.0 / module.weight[0].numel()) ** 0.5)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
                torch.nn.init.normal_(module.bias, std=0.1)
    return model


class LogitsOnly(torch.nn.Module):
    """The model with the logits tensor as its one output (the library returns an output object)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(pixel_values=pixel_values).logits
        return logits


def export(model: torch.nn.Module, path: Path, *, dynamic_batch: bool = True) -> Path:
    """``model`` to ONNX at ``path``: input ``pixel_values`` [N, 3, 64, 64], output ``logits``; N
    dynamic, or fixed at 1."""
    wrapped = LogitsOnly(model).eval()
    axes = {INPUT: {0: "N"}, OUTPUT: {0: "N"}} if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (torch.zeros(1, 3, *TILE),),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes=axes,
            dynamo=False,
        )
    return path


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth RGB uint8 picture with noise: regions the random models label differently."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 5 + seed * 30) % 256, (y * 7) % 256, ((x + 2 * y) * 3) % 256], -1)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def reference_labels(
    model: torch.nn.Module,
    image: np.ndarray,
    meta: ArtifactMeta,
    mode: Mode,
    scales: tuple[float, ...] | None,
    flip: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels (H, W), float64 probabilities (H, W, C)) by the library's own forward pass."""
    p = meta.protocol
    plan = plan_tiles(
        image,
        tile=meta.tile,
        mode=mode,
        scales=scales,
        flip=flip,
        base_size=p.base_size,
        stride_rate=p.stride_rate,
        mean=meta.mean,
    )
    mean = torch.tensor(meta.mean, dtype=torch.float32).reshape(1, 3, 1, 1)
    std = torch.tensor(meta.std, dtype=torch.float32).reshape(1, 3, 1, 1)
    with torch.no_grad():
        logits = model(pixel_values=(torch.from_numpy(plan.tiles) - mean) / std).logits
        logits = F.interpolate(logits, size=meta.tile, mode="bilinear", align_corners=meta.align_corners)
    probs = stitch_float64(plan, logits.numpy())
    return probs.argmax(axis=2), probs


def disagreement(served: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(share of pixels whose labels differ, the largest top-two margin of the reference there)."""
    differ = served != labels
    if not differ.any():
        return 0.0, 0.0
    top = np.sort(probs[differ], axis=1)
    return float(differ.mean()), float((top[:, -1] - top[:, -2]).max())


def description(
    name: str, *, stride: int, align_corners: bool, base_size: int = 96, batch: Any = "dynamic"
) -> dict[str, Any]:
    """A complete description file for one of these exports."""
    return {
        "name": name,
        "dataset": "tiny-random",
        "classes": [f"{name}-{i}" for i in range(CLASSES)],
        "palette": [[(40 * i) % 256, (90 * i + 30) % 256, (150 * i + 60) % 256] for i in range(CLASSES)],
        "tile": list(TILE),
        "mean": [123.675, 116.28, 103.53],
        "std": [58.395, 57.12, 57.375],
        "align_corners": align_corners,
        "protocol": {
            "mode": "slide",
            "base_size": base_size,
            "scales": [1.0],
            "stride_rate": 2 / 3,
            "flip": False,
        },
        "input": {
            "name": INPUT,
            "layout": "NCHW",
            "dtype": "float32",
            "colour": "RGB",
            "normalised_in_graph": False,
        },
        "output": {"name": OUTPUT, "kind": "strided_logits", "stride": stride},
        "batch": batch,
    }
