"""The stitcher's labels computed the plain way: the test oracle.

:func:`oracle_labels` is the definition, ``stitch_float64(plan, logits).argmax(axis=2)``:
every scale's float64 probabilities resized to the whole image with OpenCV,
summed, divided by the scale count, argmax over classes (the first class wins
a tie). It holds 8 x C bytes per image pixel (twice, with a resized scale), as
the service did before the banded stitch.

:func:`grouped_oracle_labels` computes the same labels a few classes at a time
(OpenCV's own resize of each group of classes, the argmax per group, then across
groups), for images where the whole (H, W, C) array does not fit in memory. It
equals the oracle because OpenCV's bilinear resize treats every channel alone
and takes the same code path for any group of 5 to 128 channels
(tests/service/protocol/test_plan.py, ``test_resize_beyond_cv2s_channel_limit...``);
groups are cut inside OpenCV's own channel ranges, and ranges of 4 channels or
fewer (IPP) are not cut at all.
"""

from __future__ import annotations

import numpy as np

from service.contract.artifact import label_dtype
from service.protocol.plan import TilePlan
from service.protocol.probs import scale_probs_hwc
from service.protocol.resize import channel_groups, resize_linear
from service.protocol.stitch import summed_probs

#: classes per group of the grouped oracle (8 bytes x group per image pixel, twice)
GROUP = 16


def stitch_float64(plan: TilePlan, logits: np.ndarray) -> np.ndarray:
    """Per-pixel class probabilities (H, W, C) in float64, as the official code keeps them: the
    channel ranges of :func:`service.protocol.stitch.summed_probs` side by side."""
    chunks = summed_probs(plan, logits)
    if len(chunks) == 1:
        return chunks[0][1]
    return np.concatenate([probs for _, probs in chunks], axis=2)


def stitch_float32(plan: TilePlan, logits: np.ndarray) -> np.ndarray:
    """The same probabilities rounded to float32 (the parity tests' and whole mode's comparisons)."""
    return stitch_float64(plan, logits).astype(np.float32)


def oracle_labels(plan: TilePlan, logits: np.ndarray) -> np.ndarray:
    """Labels (H, W) of the full-size float64 probabilities, uint8 (uint16 beyond 256 classes)."""
    return stitch_float64(plan, logits).argmax(axis=2).astype(label_dtype(logits.shape[1]))


def grouped_oracle_labels(plan: TilePlan, logits: np.ndarray, group: int = GROUP) -> np.ndarray:
    """The oracle's labels with memory for ``group`` classes of the full image at a time."""
    classes = logits.shape[1]
    groups = channel_groups(classes, group)
    best_label = np.zeros(plan.image_size, dtype=np.intp)
    best = np.full(plan.image_size, -np.inf)
    # each scale's working-size probabilities, computed once (the official float64 sums)
    scales = [scale_probs_hwc(geom, plan.tile, logits) for geom in plan.scales]
    for a, b in groups:
        total = None
        for chunks in scales:
            (lo, _), probs = next(c for c in chunks if c[0][0] <= a and b <= c[0][1])
            part = np.ascontiguousarray(probs[:, :, a - lo:b - lo])
            resized = part if part.shape[:2] == plan.image_size else resize_linear(part, plan.image_size)
            total = resized.copy() if total is None else total + resized
        assert total is not None
        if len(plan.scales) > 1:
            total /= len(plan.scales)
        label = total.argmax(axis=2)
        value = np.take_along_axis(total, label[:, :, None], axis=2)[:, :, 0]
        better = value > best  # strictly: a tie keeps the earlier (lower) class
        best_label[better] = label[better] + a
        best[better] = value[better]
    return best_label.astype(label_dtype(classes))
