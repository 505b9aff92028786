"""The stitch on the engine's device (service/engine/device_stitch.py) against the official float64 one.

The device sums in float32 where the host sums in float64, so a label may move only where the
official top two probabilities are within float32 rounding of each other. The issue's rule
("Feed the GPU", item 3) is at most 0.05% of pixels, and only where the CPU's top-two margin is at
most 0.01. Here, with ONNX Runtime's CPU provider standing in for CUDA (the same graphs and the
same code; the GPU run is tests/service/engine/test_cuda_real.py), the bounds are the measured
ones: see MARGIN and SOFT_ATOL.

Logits are the protocol tests' kinds (tests/service/protocol/test_stitch.py): natural ones
(random, smooth, blobby) must keep to both parts of the rule; the adversarial ones (exact ties,
and class 1 one float32 step above class 0 everywhere) have top-two margins of 0 or 1e-7 at every
pixel by construction, so only the margin part applies to them.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.contract.soft import Soft
from service.engine.device_kit import DeviceBatch, DeviceBudget, DeviceKit, DeviceRows
from service.engine.device_stitch import DeviceStitcher, DeviceStitching, device_bytes
from service.engine.held import SharedHeld
from service.protocol.plan import TilePlan
from tests.service.protocol.test_stitch import PLANS, _plan, make_logits
from tests.service.stitch_oracle import stitch_float64

CPU = "CPUExecutionProvider"
NATURAL = ("random", "smooth", "blobby")
ADVERSARIAL = ("ties", "near")
#: the issue's bound on the share of pixels whose label may differ (natural logits); measured at most
#: 0.021% (5 classes, random logits, multi-scale down with flip), 0 in the other 26 natural cases
MOVED_SHARE = 0.0005
#: largest official top-two margin at a pixel whose label moved: 2.36e-7 measured over every case here
#: (float32 sums of probabilities); the issue allows 0.01
MARGIN = 3e-7
#: largest |device - official| of a soft output (confidence, a class's probability): 4.66e-6 measured
#: (float32 sums of up to six windows, resized, against float64)
SOFT_ATOL = 5e-6


@pytest.fixture(scope="module")
def kit() -> DeviceKit:
    return DeviceKit(CPU)


def to_device(logits: np.ndarray) -> ort.OrtValue:
    return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(logits))


def in_batches(logits: np.ndarray, cuts: list[int]) -> DeviceRows:
    """The rows of ``logits`` as a request split over batches at ``cuts`` receives them (each batch its
    own device value, a request's rows at an offset in it)."""
    rows = DeviceRows(len(logits))
    bounds = [0, *cuts, len(logits)]
    for a, b in itertools.pairwise(bounds):
        # the batch holds two rows of another request before this one's
        other = np.zeros((2, *logits.shape[1:]), np.float32)
        batch = DeviceBatch(to_device(np.concatenate([other, logits[a:b]])), b - a + 2)
        rows[a:b] = batch[2:2 + b - a]
    return rows


def device_stitch(kit: DeviceKit, plan: TilePlan, logits: np.ndarray, chunk: int) -> DeviceStitcher:
    stitching = DeviceStitching(kit, DeviceBudget(1 << 34))
    stitcher = stitching.stitcher(plan.scales, plan.image_size, logits.shape[1], plan.tile)
    assert stitcher is not None
    step = chunk * (2 if plan.flip else 1)  # whole windows per submission, as the chain sends them
    for a in range(0, len(logits), step):
        part = logits[a:a + step]
        stitcher.add(in_batches(part, [1] if len(part) > 1 else []), a)  # a mirror in the next batch
    return stitcher


def top_two_margin(probs: np.ndarray) -> np.ndarray:
    top = np.partition(probs, -2, axis=2)
    return top[:, :, -1] - top[:, :, -2]


def moved(kit: DeviceKit, name: str, kind: str, classes: int) -> tuple[float, float, float]:
    """Share of pixels whose label moved, the largest official margin among them, the soft outputs' error."""
    plan = _plan(*PLANS[name][0])
    logits = make_logits(kind, plan.num_tiles, classes, plan.tile, seed=classes)
    oracle = stitch_float64(plan, logits)
    stitcher = device_stitch(kit, plan, logits, chunk=3)
    labels = stitcher.labels()
    assert labels.dtype == np.uint8 and labels.shape == plan.image_size
    differ = labels != oracle.argmax(axis=2)
    margin = float(top_two_margin(oracle)[differ].max()) if differ.any() else 0.0
    confidence = stitcher.soft(Soft("confidence"), labels)
    plane = stitcher.soft(Soft("probability", classes - 1), labels)
    error = max(float(np.abs(confidence - oracle.max(axis=2)).max()),
                float(np.abs(plane - oracle[:, :, classes - 1]).max()))
    stitcher.close()
    return float(differ.mean()), margin, error


@pytest.mark.parametrize("classes", [5, 11, 150])
@pytest.mark.parametrize("kind", NATURAL + ADVERSARIAL)
@pytest.mark.parametrize("name", sorted(PLANS))
def test_device_labels_move_only_where_the_official_top_two_tie(kit: DeviceKit, name: str, kind: str,
                                                                 classes: int) -> None:
    share, margin, error = moved(kit, name, kind, classes)
    assert margin <= MARGIN, f"a label moved where the official margin is {margin:.3g}"
    if kind in NATURAL:
        assert share <= MOVED_SHARE, f"{share:.4%} of the labels moved"
    assert error <= SOFT_ATOL


def test_probabilities_are_the_official_ones_in_float16(kit: DeviceKit) -> None:
    plan = _plan(*PLANS["multiscale-up-flip"][0])
    logits = make_logits("smooth", plan.num_tiles, 11, plan.tile, seed=3)
    stitcher = device_stitch(kit, plan, logits, chunk=2)
    labels = stitcher.labels()
    every = stitcher.soft(Soft("probabilities"), labels)
    official = stitch_float64(plan, logits).transpose(2, 0, 1)
    assert every.dtype == np.float16 and every.shape == official.shape
    # float16 keeps 11 bits: one step near 1 is 2**-11; the float32 sums never cross more than one
    assert np.abs(every.astype(np.float64) - official).max() <= 2.0**-11
    with pytest.raises(ValueError, match="class 11 of 11"):
        stitcher.soft(Soft("probability", 11), labels)


def test_a_request_that_does_not_fit_the_budget_is_declined_and_closing_gives_back(kit: DeviceKit) -> None:
    plan = _plan(*PLANS["slide-up"][0])
    need = device_bytes(plan.scales, plan.image_size, 5, plan.tile)
    # slide upscales (the scale is smaller than the image): folding is the peak, two scale-size arrays
    # and three image-size ones, float32
    (h, w) = plan.scales[0].size
    assert h * w < 180 * 240 and need == 4 * 5 * (2 * h * w + 3 * 180 * 240)
    budget = DeviceBudget(need + need // 2)
    stitching = DeviceStitching(kit, budget)
    first = stitching.stitcher(plan.scales, plan.image_size, 5, plan.tile)
    assert first is not None and budget.held == need
    assert stitching.stitcher(plan.scales, plan.image_size, 5, plan.tile) is None
    assert budget.declined == 1
    first.close()
    first.close()  # a second close gives nothing back twice
    assert budget.held == 0
    again = stitching.stitcher(plan.scales, plan.image_size, 5, plan.tile)
    assert again is not None
    again.close()


def test_tiles_must_arrive_in_order_with_their_mirrors(kit: DeviceKit) -> None:
    plan = _plan(*PLANS["slide-up-flip-odd"][0])
    logits = make_logits("smooth", plan.num_tiles, 5, plan.tile, seed=1)
    stitching = DeviceStitching(kit, DeviceBudget(1 << 30))
    stitcher = stitching.stitcher(plan.scales, plan.image_size, 5, plan.tile)
    assert stitcher is not None
    with pytest.raises(ValueError, match="expected tiles from 0 on, got tiles from 2"):
        stitcher.add(in_batches(logits[2:4], []), 2)
    with pytest.raises(ValueError, match="a window and its mirror"):
        stitcher.add(in_batches(logits[:3], []), 0)
    with pytest.raises(ValueError, match="have not arrived"):
        stitcher.labels()
    stitcher.add(in_batches(logits, [4, 7]), 0)
    with pytest.raises(ValueError, match="tiles more than the plan has"):
        stitcher.add(in_batches(logits[:2], []), plan.num_tiles)
    stitcher.close()


def test_rows_assembled_from_batches_locate_each_row(kit: DeviceKit) -> None:
    logits = np.arange(7 * 2 * 3 * 4, dtype=np.float32).reshape(7, 2, 3, 4)
    rows = in_batches(logits, [2, 3])
    assert len(rows) == 7
    for i in range(7):
        value, index = rows.locate(i)
        np.testing.assert_array_equal(value.numpy()[index[0]], logits[i])
    with pytest.raises(IndexError):
        rows.locate(7)
    middle = rows[1:5]  # across all three batches
    assert len(middle) == 4
    for i in range(4):
        value, index = middle.locate(i)
        np.testing.assert_array_equal(value.numpy()[index[0]], logits[1 + i])
    batch = DeviceBatch(to_device(logits), 7)
    with pytest.raises(ValueError, match="consecutive"):
        batch[0:7:2]
    with pytest.raises(ValueError, match="do not fill"):
        rows[0:2] = batch[0:3]


def test_with_workers_the_budget_is_the_whole_servers(tmp_path: Path) -> None:
    SharedHeld.create(tmp_path / "device.bin", 2)
    mine = DeviceBudget(100, shared=SharedHeld(tmp_path / "device.bin", 0))
    other = DeviceBudget(100, shared=SharedHeld(tmp_path / "device.bin", 1))  # another worker's
    assert other.take(70)
    assert not mine.take(40) and mine.declined == 1  # 70 + 40 > 100, whoever holds the 70
    assert mine.take(30) and SharedHeld(tmp_path / "device.bin").total() == 100
    other.give(70)
    assert mine.take(40)
    mine.give(70)
    assert SharedHeld(tmp_path / "device.bin").total() == 0 and mine.held == 0
