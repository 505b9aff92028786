"""The paper's stitch on the engine's device: logits never leave it, only labels (or the soft output
asked for) come back.

:class:`DeviceStitcher` is :class:`service.protocol.stitch.Stitcher` with its sums on the device,
step for step in float32 (the host's is float64): per window the softmax (and the mirror's
average), cropped to the image and added to its scale's sum (graph ``window``); per finished
scale the sum divided by its coverage, resized to the image and added to the image's sum
(``fold``); at the end the argmax (``labels_*``) and the soft outputs, divided by the scale
count. Float32 sums move a label only where the float64 top two are within rounding of each
other: tests/service/engine/test_device_stitch.py measures it against the exact stitch.

:class:`DeviceStitching` is what the chain is given (:class:`service.pipeline.runner.DeviceStitching`):
it makes a stitcher for a request when the request's sums fit the device budget now, and
answers None otherwise (the chain then fetches host logits and stitches exactly, as on CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from service.contract.soft import Soft
from service.engine.device_kit import DEVICE_LOGITS, DeviceBudget, DeviceKit, DeviceRows, Value
from service.protocol.windows import Overlap, ScaleGeometry, count_tiles, cover, overlaps


def device_bytes(geometry: Sequence[ScaleGeometry], image_size: tuple[int, int], classes: int,
                 tile: tuple[int, int]) -> int:
    """Device bytes a request's stitch holds at its peak (float32, ``classes`` values a pixel), the
    larger of the two phases: adding a window (the image's sum so far; the scale's sum in, the window
    padded to the scale, the sum out; a window's softmax, its mirror's and their average, about five
    tiles) and folding a scale (its sum and its divided probabilities; the resized scale, the image's
    sum in and out)."""
    scale = max(g.size[0] * g.size[1] for g in geometry)
    image = image_size[0] * image_size[1]
    window_phase = image + 3 * scale + 5 * tile[0] * tile[1]
    fold_phase = 2 * scale + 3 * image
    return 4 * classes * max(window_phase, fold_phase)


class DeviceStitcher:
    """One request's stitch on the device: :meth:`add` rows of :data:`DEVICE_LOGITS`, :meth:`fold`,
    :meth:`labels`, :meth:`soft`, then :meth:`close` (the chain always calls it)."""

    route = "device"

    def __init__(self, kit: DeviceKit, budget: DeviceBudget, reserved: int, geometry: Sequence[ScaleGeometry],
                 image_size: tuple[int, int], classes: int, tile: tuple[int, int]) -> None:
        self._kit = kit
        self._budget: DeviceBudget | None = budget
        self._reserved = reserved
        self.geometry = tuple(geometry)
        self.image_size = image_size
        self.classes = classes
        self.tile = tile
        self._scale = 0
        self._received = 0  # tiles of the current scale
        self._windows: list[Overlap] = list(overlaps(self.geometry[0], tile))
        self._next_window = 0
        self._sum: Value = kit.zero()
        self._total: Value = kit.zero()

    @property
    def expected(self) -> int:
        if self._scale == len(self.geometry):
            return count_tiles(self.geometry)
        return self.geometry[self._scale].first + self._received

    def add(self, rows: DeviceRows, first: int) -> None:
        """Add the windows among tiles ``first .. first + len(rows)`` (consecutive, plan order, a
        window and its mirror together) to their scales' sums on the device."""
        if first != self.expected:
            raise ValueError(f"expected tiles from {self.expected} on, got tiles from {first}")
        done = 0
        while done < len(rows):
            if self._scale == len(self.geometry):
                raise ValueError(f"{len(rows) - done} tiles more than the plan has")
            geom = self.geometry[self._scale]
            if self._received == geom.num_tiles:
                self.fold()
                continue
            take = min(len(rows) - done, geom.num_tiles - self._received)
            if geom.flip and take % 2:
                raise ValueError("a window and its mirror must come in the same call")
            self._add_windows(geom, rows, first, first + done + take)
            self._received += take
            done += take

    def _add_windows(self, geom: ScaleGeometry, rows: DeviceRows, first: int, stop: int) -> None:
        h, w = geom.size
        while self._next_window < len(self._windows) and self._windows[self._next_window][0] < stop:
            k, (ty, tx), (iy, ix) = self._windows[self._next_window]
            value, index = rows.locate(k - first)
            pads = [0, iy.start, ix.start, 0, h - iy.stop, w - ix.stop]  # (C, y, x) before, then after
            feed: dict[str, Any] = {"logits": value, "index": index, "pads": np.array(pads, np.int64),
                                    "crop": np.array([ty.start, tx.start, ty.stop, tx.stop], np.int64),
                                    "total": self._sum}
            if geom.flip:
                feed["mirror_logits"], feed["mirror_index"] = rows.locate(k + 1 - first)
            self._sum = self._kit.run("window_flip" if geom.flip else "window", feed)
            self._next_window += 1

    def fold(self) -> None:
        """Fold a scale whose tiles have all arrived into the image's sum."""
        if self._scale == len(self.geometry):
            return
        geom = self.geometry[self._scale]
        if self._received != geom.num_tiles:
            return
        self._total = self._kit.run("fold", {
            "scale_sum": self._sum, "cover": cover(geom, self.tile).astype(np.float32), "total": self._total,
            "size": np.array([1, self.classes, *self.image_size], np.int64)})
        self._sum = self._kit.zero()  # the scale's sum is freed now
        self._scale += 1
        self._received = 0
        if self._scale < len(self.geometry):
            self._windows, self._next_window = list(overlaps(self.geometry[self._scale], self.tile)), 0

    def labels(self) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]:
        """The image's labels (H, W), once every tile has been added."""
        self.fold()
        if self._scale != len(self.geometry):
            raise ValueError(f"tiles from {self.expected} on have not arrived")
        graph = "labels_uint8" if self.classes <= 256 else "labels_uint16"
        labels: npt.NDArray[np.uint8] | npt.NDArray[np.uint16] = self._kit.run(
            graph, {"total": self._total}, to_host=True)
        return labels

    def soft(self, request: Soft, labels: npt.NDArray[np.integer]) -> npt.NDArray[np.floating]:
        """The soft output ``request``, from the same sums (after :meth:`labels`)."""
        if not 0 <= request.class_index < self.classes:
            raise ValueError(f"class {request.class_index} of {self.classes}")
        count = np.array(len(self.geometry), np.float32)
        if request.kind == "probabilities":
            out: npt.NDArray[np.floating] = self._kit.run(
                "probabilities", {"total": self._total, "count": count}, to_host=True)
        elif request.kind == "probability":
            out = self._kit.run("probability", {"total": self._total, "count": count,
                                                "class_index": np.array(request.class_index, np.int64)},
                                to_host=True)
        else:
            out = self._kit.run("confidence", {"total": self._total, "count": count}, to_host=True)
        return out

    def close(self) -> None:
        """Free the device sums and give their bytes back to the budget (once; safe to repeat)."""
        self._sum = self._total = None
        if self._budget is not None:
            self._budget.give(self._reserved)
            self._budget = None


class DeviceStitching:
    """Device stitchers for one engine's requests, within ``budget``."""

    output = DEVICE_LOGITS

    def __init__(self, kit: DeviceKit, budget: DeviceBudget,
                 on_route: Callable[[str], None] = lambda route: None) -> None:
        self.kit = kit
        self.budget = budget
        self._on_route = on_route  # told "device" or "host" for each request asked about (a metric)

    def stitcher(self, geometry: Sequence[ScaleGeometry], image_size: tuple[int, int], classes: int,
                 tile: tuple[int, int]) -> DeviceStitcher | None:
        """A stitcher holding its bytes of the budget, or None when they do not fit now."""
        need = device_bytes(geometry, image_size, classes, tile)
        if not self.budget.take(need):
            self._on_route("host")
            return None
        self._on_route("device")
        return DeviceStitcher(self.kit, self.budget, need, geometry, image_size, classes, tile)
