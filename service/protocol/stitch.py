"""The paper's inference protocols as pure functions: image -> tiles, tile logits -> probabilities or labels.

Every mode turns an image into tiles of the model's fixed input size, so the
batcher can mix tiles of different requests; the stitcher turns the model's
logits for those tiles back into per-pixel probabilities or labels of the
original image.

``slide`` and ``multiscale`` are the official procedure (hszhao/semseg
``tool/test.py``: ``test``, ``scale_process``, ``net_process``), step for step:

* per scale, the image is converted to float32 FIRST and resized bilinearly
  (``cv2.INTER_LINEAR``; resizing uint8 rounds, which alone moves probabilities
  by 2e-5); padded with the mean colour; cut into windows (:mod:`service.protocol.windows`);
  with ``flip`` each window's horizontal mirror is a tile too, right after it;
* softmax over classes per tile in float32; the mirror's probabilities mirrored
  back and the pair averaged, ``(p + mirror(q)) / 2``, in float32;
* window probabilities summed in float64 and divided by the number of windows
  covering each pixel; padding cropped (:mod:`service.protocol.probs`); the
  float64 probabilities resized to the original size (``cv2.INTER_LINEAR``);
  summed over scales and divided by their count; argmax.

``whole`` resizes the image to exactly the tile (aspect ratio not kept): one
tile (plus its mirror with ``flip``), whose probabilities are resized back.

:func:`summed_probs` returns those full-size probabilities, per channel range
(8 x classes bytes per pixel in float64). :func:`stitch_labels`, what the
server uses, returns exactly their argmax without ever holding them: when one
window is the image, straight from its float32 probabilities; when the image is
no larger than the working resolution, by the official computation itself;
otherwise from each scale's probabilities at its working size, band by band
(:mod:`service.protocol.bands`). :func:`stitch_peak_bytes` bounds its memory from
the geometry alone, for admission before decoding.

Tiles hold RAW 0..255 RGB values (normalisation is inside the ONNX graph), so
the padding colour ``mean`` is in those units: it normalises to zero.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from numpy.typing import NDArray

from service.contract.artifact import label_dtype
from service.protocol.argmax import Labels, argmax_classes
from service.protocol.bands import resized_argmax, uses_full_size
from service.protocol.plan import TilePlan
from service.protocol.probs import Chunks, scale_probs_chw, scale_probs_hwc, window_probs
from service.protocol.resize import resize_linear
from service.protocol.taps import resize_taps
from service.protocol.values import Source


def _check_logits(plan: TilePlan, logits: NDArray[np.float32]) -> NDArray[np.float32]:
    th, tw = plan.tile
    if logits.ndim != 4 or logits.shape[0] != plan.num_tiles or logits.shape[2:] != (th, tw):
        raise ValueError(f"expected logits of shape ({plan.num_tiles}, C, {th}, {tw}), got {logits.shape}")
    if logits.shape[1] < 1:
        raise ValueError("logits have no classes")
    if not plan.scales:
        raise ValueError("the plan has no scales")
    return np.asarray(logits, dtype=np.float32)


def summed_probs(plan: TilePlan, logits: NDArray[np.float32]) -> Chunks:
    """The official per-pixel probabilities of the whole image, float64, per channel range.

    Every scale's probabilities resized to the image, summed, divided by the scale count:
    8 x classes bytes per image pixel. :func:`stitch_labels` takes their argmax this way
    only when the image is no larger than the working resolution (:func:`_full_size_labels`);
    the tests' oracle (tests/service/stitch_oracle.py) joins the ranges.
    """
    logits = _check_logits(plan, logits)
    total: Chunks = []
    for geom in plan.scales:
        for i, (rng, probs) in enumerate(scale_probs_hwc(geom, plan.tile, logits)):
            if probs.shape[:2] != plan.image_size:
                probs = resize_linear(probs, plan.image_size)
            if len(total) <= i:
                total.append((rng, probs))
            else:
                total[i][1][...] += probs
            del probs  # a resized range must not outlive its addition into the next scale's build
    if len(plan.scales) > 1:
        for _, probs in total:
            probs /= len(plan.scales)
    return total


def _lone_window_labels(plan: TilePlan, logits: NDArray[np.float32]) -> Labels | None:
    """Labels straight from the window's float32 probabilities when ONE window makes the image.

    One scale, one window, no resize back (``whole`` on an image of the tile's
    size, or slide on an image no larger than the tile): the official float64
    value of a pixel is 0 + p divided by a coverage of 1, i.e. p itself, so its
    argmax is the argmax of the float32 p, ties included. This skips the
    (C, H, W) float64 copy: about 15 ms of CPU of a 360x480 request, measured
    on the 2-core benchmark machine (BENCHMARKS.md). None when the plan is
    anything else.
    """
    if len(plan.scales) != 1:
        return None
    geom = plan.scales[0]
    if geom.num_windows != 1 or geom.size != plan.image_size:
        return None
    logits = _check_logits(plan, logits)
    (top, left), (h, w) = geom.pad, geom.size
    probs = window_probs(logits, geom.first, geom.flip)[:, top:top + h, left:left + w]
    return argmax_classes(probs, label_dtype(probs.shape[0]))


def _full_size_labels(plan: TilePlan, logits: NDArray[np.float32]) -> Labels:
    """The official computation itself: every scale resized to the image, summed, argmax.

    Used when that is no larger than the working resolution, or where OpenCV's
    resize is not the taps' arithmetic (:func:`service.protocol.bands.uses_full_size`).
    More than 128 classes stay in channel ranges; the argmax is taken per range,
    then across ranges.
    """
    chunks = summed_probs(plan, logits)
    dtype = label_dtype(chunks[-1][0][1])
    best_label: NDArray[np.intp] = chunks[0][1].argmax(axis=2)
    if len(chunks) > 1:
        best = np.take_along_axis(chunks[0][1], best_label[:, :, None], axis=2)[:, :, 0]
        for (a, _), probs in chunks[1:]:
            label = probs.argmax(axis=2)
            value = np.take_along_axis(probs, label[:, :, None], axis=2)[:, :, 0]
            # strictly greater: on a tie the earlier class wins, as in one argmax over all classes
            better = value > best
            best_label[better] = label[better] + a
            best[better] = value[better]
    return cast(Labels, best_label.astype(dtype))


def _general_labels(plan: TilePlan, logits: NDArray[np.float32]) -> Labels:
    logits = _check_logits(plan, logits)
    classes = logits.shape[1]
    if uses_full_size(plan.scales, plan.image_size, classes):
        return _full_size_labels(plan, logits)
    # each scale at its working size, with the taps of OpenCV's resize to the image
    sources = [Source(scale_probs_chw(geom, plan.tile, logits), *resize_taps(geom.size, plan.image_size))
               for geom in plan.scales]
    return resized_argmax(sources, plan.image_size, label_dtype(classes))


def stitch_labels(plan: TilePlan, logits: NDArray[np.float32]) -> NDArray[np.uint8] | NDArray[np.uint16]:
    """Per-pixel argmax labels (H, W), uint8 (uint16 beyond 256 classes).

    Exactly the argmax of :func:`summed_probs` over all classes (ties: the first class),
    without ever holding per-class values of the full image: memory follows the
    working resolution (:func:`stitch_peak_bytes`), not image pixels x classes.
    """
    lone = _lone_window_labels(plan, logits)
    if lone is not None:
        return lone
    return _general_labels(plan, logits)
