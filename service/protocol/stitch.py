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

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from service.contract.artifact import label_dtype
from service.contract.soft import Soft
from service.protocol.argmax import Labels, argmax_classes
from service.protocol.bands import resized_argmax, uses_full_size
from service.protocol.plan import TilePlan
from service.protocol.probs import Chunks, ScaleSum, scale_probs_hwc, window_probs
from service.protocol.resize import resize_groups, resize_linear
from service.protocol.taps import resize_taps
from service.protocol.values import Source, dense_values, pixel_values
from service.protocol.windows import ScaleGeometry, count_tiles


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
    only when the image is no larger than the working resolution (:class:`Stitcher`);
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


class Stitcher:
    """Labels of one image from its tiles' logits as they arrive: :func:`stitch_labels` in a stream.

    :meth:`add` takes consecutive tiles in plan order (a window and its mirror in the same call)
    and folds each window into its scale's float64 sum (:class:`ScaleSum`); the logits can go at
    once. When a scale is complete it is folded into what the route keeps:

    * one window is the image: that window's logits, until :meth:`labels`;
    * the full-size computation (:func:`service.protocol.bands.uses_full_size`): one image-size
      float64 sum, channels first, to which each scale is added resized (a few classes at a
      time, with OpenCV), then freed: one scale's probabilities and the image-size sum at most;
    * otherwise each scale at its working size, for the banded argmax of
      :mod:`service.protocol.bands`.

    Every value is the official computation's, added in its order, so :meth:`labels` equals
    :func:`stitch_labels` on all the logits at once (tests/service/protocol/test_stitch.py).
    """

    def __init__(self, geometry: Sequence[ScaleGeometry], image_size: tuple[int, int], classes: int,
                 tile: tuple[int, int]) -> None:
        if not geometry:
            raise ValueError("the plan has no scales")
        if classes < 1:
            raise ValueError("logits have no classes")
        self.geometry = tuple(geometry)
        self.image_size = image_size
        self.classes = classes
        self.tile = tile
        first = self.geometry[0]
        lone = len(self.geometry) == 1 and first.num_windows == 1 and first.size == image_size
        self.route = ("lone" if lone else "full" if uses_full_size(self.geometry, image_size, classes)
                      else "bounded")
        self._scale = 0
        self._building: ScaleSum | None = None
        self._lone: NDArray[np.float32] | None = None
        self._lone_values: NDArray[np.float32] | None = None  # its probabilities, once computed
        self._total: NDArray[np.float64] | None = None  # the full-size route's (classes, H, W) sum
        self._sources: list[Source] = []  # the bounded route's scales
        self._divided = False  # the full-size sum divided by the scale count (labels() does it once)

    @property
    def expected(self) -> int:
        """Index of the next tile :meth:`add` takes."""
        if self._scale == len(self.geometry):
            return count_tiles(self.geometry)
        # a complete scale not yet folded ends where the next one starts: the same index
        return self.geometry[self._scale].first + (self._building.received if self._building else 0)

    def add(self, logits: NDArray[np.float32], first: int) -> None:
        """Add the logits ``(n, classes, tile_h, tile_w)`` of tiles ``first .. first + n`` to their
        scales (a scale completed by an earlier call is folded first)."""
        th, tw = self.tile
        if logits.ndim != 4 or logits.shape[1:] != (self.classes, th, tw):
            raise ValueError(f"expected logits of shape (n, {self.classes}, {th}, {tw}), got {logits.shape}")
        if first != self.expected:
            raise ValueError(f"expected tiles from {self.expected} on, got tiles from {first}")
        logits = np.asarray(logits, dtype=np.float32)
        done = 0
        while done < len(logits):
            if self._scale == len(self.geometry):
                raise ValueError(f"{len(logits) - done} tiles more than the plan has")
            geom = self.geometry[self._scale]
            if self.route == "lone":
                self._lone, done = logits[done:], len(logits)
                self._scale += 1
                continue
            if self._building is None:
                self._building = ScaleSum(geom, self.tile, self.classes)
            if self._building.complete:
                self.fold()
                continue
            take = min(len(logits) - done, geom.num_tiles - self._building.received)
            self._building.add(logits[done:done + take], first + done)
            done += take

    def fold(self) -> None:
        """Fold the scale whose tiles have all arrived into what the route keeps (:meth:`add` and
        :meth:`labels` do it when needed; a caller that calls it after dropping the last chunk's
        logits keeps them out of the fold's peak)."""
        if self._building is None or not self._building.complete:
            return
        geom = self.geometry[self._scale]
        probs = self._building.result()
        self._building = None
        self._fold(geom, probs)
        self._scale += 1

    def _fold(self, geom: ScaleGeometry, probs: NDArray[np.float64]) -> None:
        """Keep a finished scale as the route needs it."""
        if self.route == "bounded":
            self._sources.append(Source(probs, *resize_taps(geom.size, self.image_size)))
            return
        if self._total is None:  # 0 + p is p: the first scale's values are the sum's
            self._total = np.zeros((self.classes, *self.image_size), dtype=np.float64)
        if geom.size == self.image_size:  # OpenCV returns an identical copy for an unchanged size
            self._total += probs
            return
        height, width = self.image_size
        for a, b in resize_groups(self.classes, geom.size, self.image_size):
            resized = resize_linear(np.ascontiguousarray(probs[a:b].transpose(1, 2, 0)), self.image_size)
            self._total[a:b] += resized.reshape(height, width, b - a).transpose(2, 0, 1)
            del resized

    def labels(self) -> Labels:
        """The image's labels (H, W), once every tile has been added."""
        self.fold()
        if self._scale != len(self.geometry):
            raise ValueError(f"tiles from {self.expected} on have not arrived")
        dtype = label_dtype(self.classes)
        if self.route == "lone":
            return argmax_classes(self._lone_probs(), dtype)
        if self.route == "bounded":
            return resized_argmax(self._sources, self.image_size, dtype)
        assert self._total is not None
        if len(self.geometry) > 1 and not self._divided:
            self._total /= len(self.geometry)
            self._divided = True
        return argmax_classes(self._total, dtype)

    def _lone_probs(self) -> NDArray[np.float32]:
        """The one window's probabilities, cropped to the image (computed once: labels, then soft)."""
        if self._lone_values is None:
            assert self._lone is not None
            geom = self.geometry[0]
            (top, left), (h, w) = geom.pad, geom.size
            self._lone_values = window_probs(self._lone, 0, geom.flip)[:, top:top + h, left:left + w]
            self._lone = None  # the logits are not needed again
        return self._lone_values

    def soft(self, request: Soft, labels: Labels) -> NDArray[np.floating]:
        """The soft output ``request`` of the image, after :meth:`labels` gave ``labels``."""
        if not 0 <= request.class_index < self.classes:
            raise ValueError(f"class {request.class_index} of {self.classes}")
        if self.route == "lone":
            values: NDArray[np.floating] = self._lone_probs()
        elif self.route == "full":
            assert self._total is not None and (self._divided or len(self.geometry) == 1), "labels() first"
            values = self._total
        elif request.kind == "probabilities":
            out = np.empty((self.classes, *self.image_size), dtype=np.float16)
            dense_values(self._sources, out)
            return out
        else:  # the bounded route computes only the values asked for, pointwise
            which = labels if request.kind == "confidence" else np.asarray(request.class_index)
            return pixel_values(self._sources, which.astype(np.intp), self.image_size).astype(np.float32)
        if request.kind == "probabilities":
            return values.astype(np.float16)
        if request.kind == "probability":
            plane: NDArray[np.float32] = values[request.class_index].astype(np.float32)
            return plane
        top: NDArray[np.float32] = np.max(values, axis=0).astype(np.float32)
        return top

    def close(self) -> None:
        """Nothing to give back: host memory goes with the object (the device stitcher's frees its sums)."""


def stitch_labels(plan: TilePlan, logits: NDArray[np.float32]) -> NDArray[np.uint8] | NDArray[np.uint16]:
    """Per-pixel argmax labels (H, W), uint8 (uint16 beyond 256 classes).

    Exactly the argmax of :func:`summed_probs` over all classes (ties: the first class),
    without ever holding per-class values of the full image beyond the working resolution:
    a :class:`Stitcher` fed every tile at once (memory: :func:`stitch_peak_bytes`).
    """
    logits = _check_logits(plan, logits)
    stitcher = Stitcher(plan.scales, plan.image_size, logits.shape[1], plan.tile)
    stitcher.add(logits, 0)
    return stitcher.labels()
