"""Soft outputs: what a client may ask for besides the labels (the output formats ``confidence`` and
``probability`` of service/codec/outputs.py, and /v2's ``probabilities``), computed by
:meth:`service.protocol.stitch.Stitcher.soft`.

Tested by tests/service/protocol/test_stitch_soft.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: the top class's probability per pixel, one class's probability per pixel, or every class's
SoftKind = Literal["confidence", "probability", "probabilities"]


@dataclass(frozen=True)
class Soft:
    """A soft output: (H, W) float32 for ``confidence`` and ``probability`` (of class
    ``class_index``), (C, H, W) float16 for ``probabilities``; each value is the official float64
    probability (the mean over scales of the resized window averages), rounded to that type."""

    kind: SoftKind
    class_index: int = 0

    def output_bytes(self, height: int, width: int, classes: int) -> int:
        """Bytes of the array it makes for an image of this size."""
        return height * width * (classes * 2 if self.kind == "probabilities" else 4)
