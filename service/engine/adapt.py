"""The chain's tiles to a described graph's input, and its output back to the chain's logits.

The chain always cuts ``(N, 3, H, W)`` float32 raw 0..255 RGB tiles and stitches ``(N, C, H, W)``
float32 logits at the tile's resolution (or crops ``(N, H, W)`` labels). A model described by
a file beside it (service/contract/description.py) may take BGR, NHWC, float16 or uint8, want
``(x - mean) / std`` fed to it, return logits at a stride or in float16, or return labels only;
:class:`GraphAdapter` converts both ways and runs a fixed-batch-1 graph a tile at a time.

Strided logits are resized to the tile as torch's
``F.interpolate(mode="bilinear", align_corners=...)`` does (:func:`resize_bilinear`): per
output row and column the source coordinate ``(i + 0.5) * in / out - 0.5`` clamped at 0
(``align_corners`` false) or ``i * (in - 1) / (out - 1)`` (true), interpolated along the width
first, then the height, in float32. Each tile's logits are resized before the stitch, as the
official code resizes each window's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from service.contract.artifact import ArtifactError, ArtifactMeta, Tiles

if TYPE_CHECKING:  # a type only: the engine stays on the floor above the artifact (tests/test_structure.py)
    from service.contract.description import GraphCall

#: ONNX Runtime's types of a logits output and of a labels-only output (class ids)
_FLOAT_TYPES = ("tensor(float)", "tensor(float16)")
_LABEL_TYPES = tuple(f"tensor({t})" for t in ("uint8", "int8", "uint16", "int16", "int32", "int64"))


def _taps(n_in: int, n_out: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (low, high) and the high one's weight, float32, for each output index."""
    i = np.arange(n_out, dtype=np.float32)
    if align_corners:
        scale = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0.0)
        src = i * scale
    else:
        scale = np.float32(n_in / n_out)
        src = np.maximum((i + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))
    low = np.minimum(src.astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, (src - low.astype(np.float32)).astype(np.float32)


def resize_bilinear(logits: npt.NDArray[np.float32], size: tuple[int, int],
                    align_corners: bool) -> npt.NDArray[np.float32]:
    """``(N, C, h, w)`` float32 -> ``(N, C, *size)``, torch's bilinear interpolation."""
    h, w = size
    if logits.shape[2:] == (h, w):
        return logits
    x0, x1, fx = _taps(logits.shape[3], w, align_corners)
    y0, y1, fy = _taps(logits.shape[2], h, align_corners)
    one = np.float32(1.0)
    rows = logits[..., x0] * (one - fx) + logits[..., x1] * fx
    out: npt.NDArray[np.float32] = (rows[..., y0, :] * (one - fy)[:, None]
                                    + rows[..., y1, :] * fy[:, None])
    return out


class GraphAdapter:
    """Feeds a described graph the chain's tiles and hands back the chain's output."""

    def __init__(self, meta: ArtifactMeta, call: GraphCall, labels_dtype: type[np.generic]) -> None:
        self.meta = meta
        self.call = call
        self.labels_dtype = labels_dtype
        self._mean = np.asarray(meta.mean, np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(meta.std, np.float32).reshape(1, 3, 1, 1)

    @property
    def output(self) -> str:
        return self.call.output

    def check(self, session: Any) -> dict[str, type[np.generic]]:
        """The chain's output this session gives, with the dtype it hands the chain; an ArtifactError
        if the session's output is not what the description says."""
        outs = {o.name: o for o in session.get_outputs()}
        out = outs.get(self.call.output_name)
        if out is None:
            raise ArtifactError(f"output.name {self.call.output_name!r} is not an output of the model; "
                                f"its outputs are {list(outs)}")
        labels = self.call.kind == "labels"
        if out.type not in (_LABEL_TYPES if labels else _FLOAT_TYPES):
            raise ArtifactError(f"output {out.name!r} is {out.type}: output.kind {self.call.kind} needs "
                                + ("integer class ids" if labels else "float32 or float16 logits"))
        return {self.output: self.labels_dtype if labels else np.float32}

    def model_input(self, tiles: Tiles) -> npt.NDArray[Any]:
        """Raw 0..255 RGB NCHW float32 tiles as the graph takes them."""
        c = self.call
        x: npt.NDArray[Any] = tiles if c.normalised_in_graph else (tiles - self._mean) / self._std
        if c.colour == "BGR":
            x = x[:, ::-1]
        if c.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        if c.dtype == "float16":
            x = x.astype(np.float16)
        elif c.dtype == "uint8":
            x = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(x)

    def chain_output(self, raw: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The graph's output for some tiles as the chain takes it: logits (N, C, H, W) float32 at the
        tile's resolution, or labels (N, H, W) in the class count's dtype."""
        c, (h, w), classes = self.call, self.meta.tile, self.meta.num_classes
        if c.kind == "labels":
            if raw.ndim != 3 or raw.shape[1:] != (h, w):
                raise ValueError(f"output {c.output_name!r} is {raw.shape}, expected (N, {h}, {w})")
            if raw.size and (raw.min() < 0 or raw.max() >= classes):
                raise ValueError(f"output {c.output_name!r} holds class ids outside 0..{classes - 1}")
            return raw.astype(self.labels_dtype)
        if raw.ndim != 4 or raw.shape[1] != classes:
            raise ValueError(f"output {c.output_name!r} is {raw.shape}, expected (N, {classes}, H, W)")
        logits = raw.astype(np.float32, copy=False)
        if c.kind == "logits":
            if logits.shape[2:] != (h, w):
                raise ValueError(f"output {c.output_name!r} is {logits.shape[2]}x{logits.shape[3]}, not the "
                                 f"tile {h}x{w}")
            return logits
        want = [(t // c.stride, -(-t // c.stride)) for t in (h, w)]
        if not all(s in ok for s, ok in zip(logits.shape[2:], want, strict=True)):
            raise ValueError(f"output {c.output_name!r} is {logits.shape[2]}x{logits.shape[3]}, not the tile "
                             f"{h}x{w} at stride {c.stride}")
        return resize_bilinear(logits, (h, w), self.meta.align_corners)

    def run(self, session: Any, tiles: Tiles) -> npt.NDArray[Any]:
        """The chain's output for ``tiles`` on an ONNX Runtime session: a batch at once, or (a graph
        with a fixed batch of 1) a tile at a time."""
        step = len(tiles) if self.call.batch is None else 1
        name, feed = self.call.output_name, self.call.input_name
        parts = [self.chain_output(session.run([name], {feed: self.model_input(tiles[i:i + step])})[0])
                 for i in range(0, len(tiles), step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
