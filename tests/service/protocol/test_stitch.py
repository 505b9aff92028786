"""``stitch_labels`` gives exactly the labels of the full-size float64 computation, by every route.

The oracle (tests/service/stitch_oracle.py) resizes every scale's float64
probabilities to the whole image with OpenCV, sums, divides and takes the
argmax. The stitcher must agree on every pixel, ties included (the first class
wins), whichever route it takes: one window, the full-size computation, or the
bounded route (rankings, candidates, every class where candidates prove
nothing, dense bands where pointwise work would cost more). Logits are random
(every pixel a border), smooth (a coarse field upsampled, as a network's
output), blobby (confident regions with sharp borders) or tied (few distinct
values, duplicated classes: exact ties everywhere).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import cv2
import numpy as np
import pytest

from service.protocol import bands as stitch_bands
from service.protocol import probs as stitch_probs
from service.protocol.bands import uses_full_size
from service.protocol.bounds import summarise
from service.protocol.plan import TilePlan, plan_tiles
from service.protocol.probs import scale_probs_chw, scale_probs_hwc
from service.protocol.resize import resize_linear
from service.protocol.stitch import stitch_labels
from service.protocol.taps import (
    apply_taps,
    halves_both_sides,
    identity_taps,
    opencv_is_separable,
    resize_taps,
)
from tests.service.stitch_oracle import grouped_oracle_labels, oracle_labels

MEAN = (123.675, 116.28, 103.53)


def _smooth(rng: np.random.Generator, n: int, classes: int, tile: tuple[int, int], cells: int) -> np.ndarray:
    """A coarse random field per tile, upsampled bilinearly as a network's last layer does."""
    coarse = rng.standard_normal((n, cells, cells, classes)).astype(np.float32) * 4
    return np.stack([resize_linear(c, tile).transpose(2, 0, 1) for c in coarse])


def make_logits(kind: str, n: int, classes: int, tile: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.standard_normal((n, classes, *tile), dtype=np.float32) * 2
    if kind == "smooth":
        return _smooth(rng, n, classes, tile, cells=5)
    if kind == "blobby":  # confident regions: one class far ahead, borders a pixel wide
        field = _smooth(rng, n, classes, tile, cells=4).argmax(axis=1)
        onehot = (field[:, None] == np.arange(classes)[None, :, None, None]).astype(np.float32)
        return onehot * 6 + rng.standard_normal((n, classes, *tile), dtype=np.float32) * 0.3
    if kind == "ties":  # few values and every class twice: exact ties inside and across channel ranges
        half = rng.integers(-2, 2, size=(n, (classes + 1) // 2, *tile)).astype(np.float32) / 2
        return np.ascontiguousarray(np.repeat(half, 2, axis=1)[:, :classes])
    if kind == "near":  # class 1 a float32 step above class 0 on a smooth field: margins of 1e-7
        logits = _smooth(rng, n, classes, tile, cells=4)
        logits[:, 1] = np.nextafter(logits[:, 0], np.float32(np.inf))
        return logits
    raise ValueError(kind)


def _plan(size: tuple[int, int], tile: tuple[int, int], mode: str, base: int, scales: list[float] | None,
          flip: bool) -> TilePlan:
    image = np.random.default_rng(size[0]).integers(0, 256, (*size, 3), dtype=np.uint8)
    return plan_tiles(image, tile=tile, mode=mode, base_size=base, scales=scales, flip=flip,  # type: ignore[arg-type]
                      mean=MEAN)


# (image size, tile, mode, base size, scales, flip), and whether the image is no larger than the working
# sizes together (the full-size route; a scale larger than the image always makes it so) or larger (bounded:
# upscales of 5x to 16x)
PLANS = {
    "slide-up": (((180, 240), (18, 24), "slide", 24, None, False), False),
    "slide-up-flip-odd": (((163, 211), (13, 17), "slide", 19, None, True), False),
    "multiscale-up-flip": (((160, 120), (20, 20), "multiscale", 28, None, True), False),
    "whole-up": (((150, 250), (20, 24), "whole", 24, None, True), False),
    "multiscale-up-and-down": (((90, 120), (24, 24), "multiscale", 75, [0.5, 1.0, 1.7], False), True),
    "multiscale-down-flip": (((60, 80), (40, 40), "multiscale", 90, [0.75, 1.25], True), True),
}


KINDS = ("random", "smooth", "blobby", "ties", "near")
CASES = [(kind, classes) for kind in KINDS for classes in (5, 11, 150)]
# 200 classes: two channel ranges of 100 (150 makes two of 75)
CASES += [("blobby", 200), ("ties", 200)]


@pytest.mark.parametrize(("kind", "classes"), CASES)
@pytest.mark.parametrize("name", sorted(PLANS))
def test_labels_equal_the_oracle(name: str, kind: str, classes: int) -> None:
    args, full_size = PLANS[name]
    plan = _plan(*args)
    assert uses_full_size(plan.scales, plan.image_size, classes) == full_size
    logits = make_logits(kind, plan.num_tiles, classes, plan.tile, seed=classes)
    got = stitch_labels(plan, logits)
    assert got.dtype == np.uint8 and got.shape == plan.image_size
    np.testing.assert_array_equal(got, oracle_labels(plan, logits))


@pytest.mark.parametrize(("size", "classes", "kind"), [
    ((1200, 1600), 11, "smooth"),  # 2 Mpx from a 60x80 working size: 20x upscale
    ((1200, 1600), 5, "blobby"),
    ((1000, 1000), 150, "smooth"),  # ADE20K's classes: the grouped oracle (equal to the oracle, see below)
])
def test_labels_equal_the_oracle_on_megapixel_upscales(size: tuple[int, int], classes: int,
                                                       kind: str) -> None:
    plan = _plan(size, (48, 64), "slide", 80, None, False)
    logits = make_logits(kind, plan.num_tiles, classes, plan.tile, seed=7)
    oracle = grouped_oracle_labels if classes > 16 else oracle_labels
    np.testing.assert_array_equal(stitch_labels(plan, logits), oracle(plan, logits))


@pytest.mark.parametrize("classes", [150, 200])
def test_the_grouped_oracle_is_the_oracle(classes: int) -> None:
    plan = _plan((90, 130), (24, 24), "multiscale", 40, [0.5, 1.0, 1.5], True)
    for kind in ("smooth", "ties"):
        logits = make_logits(kind, plan.num_tiles, classes, plan.tile, seed=3)
        grouped = grouped_oracle_labels(plan, logits, group=7)
        np.testing.assert_array_equal(grouped, oracle_labels(plan, logits))


@pytest.fixture
def spies(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Counts the calls of the bounded route's three ways of deciding open pixels."""
    calls = {"_by_candidates": 0, "_all_classes": 0, "dense": 0}

    def spy(name: str) -> Callable[..., object]:
        real = getattr(stitch_bands, name)

        def counted(*args: object) -> object:
            if len(args) < 3 or not hasattr(args[2], "shape") or args[2].shape[0]:  # skip empty pixel lists
                calls[name] += 1
            return real(*args)
        return counted

    for name in calls:
        monkeypatch.setattr(stitch_bands, name, spy(name))
    yield calls


def test_every_way_of_the_bounded_route_is_exact(spies: dict[str, int]) -> None:
    plan = _plan((360, 480), (36, 48), "slide", 48, None, False)
    # confident regions: open pixels only at borders, decided by their candidates
    logits = make_logits("blobby", plan.num_tiles, 150, plan.tile, seed=1)
    np.testing.assert_array_equal(stitch_labels(plan, logits), oracle_labels(plan, logits))
    assert spies["_by_candidates"] > 0 and spies["_all_classes"] == 0 and spies["dense"] == 0
    # three classes tied at a few spots: the third is as large as the best, every class is needed there
    logits[:, 2:5, 5:8, 5:8] = 9
    np.testing.assert_array_equal(stitch_labels(plan, logits), oracle_labels(plan, logits))
    assert spies["_all_classes"] > 0 and spies["dense"] == 0
    # noise: every pixel open, the dense pass is cheaper
    logits = make_logits("random", plan.num_tiles, 5, plan.tile, seed=2)
    np.testing.assert_array_equal(stitch_labels(plan, logits), oracle_labels(plan, logits))
    assert spies["dense"] > 0


@pytest.mark.parametrize("classes", [1, 2, 3, 4])
def test_few_classes_and_opencvs_other_code_paths(classes: int) -> None:
    """3 or 4 channels go to IPP in the pip OpenCV: those scales take the full-size route, exactly."""
    plan = _plan(*PLANS["slide-up"][0])
    logits = make_logits("smooth", plan.num_tiles, classes, plan.tile, seed=classes)
    got = stitch_labels(plan, logits)
    np.testing.assert_array_equal(got, oracle_labels(plan, logits))
    if classes == 1:
        assert not got.any()
    separable = opencv_is_separable(classes, plan.scales[0].size, plan.image_size)
    assert uses_full_size(plan.scales, plan.image_size, classes) == (not separable)


def test_an_exact_halving_is_left_to_opencv() -> None:
    """Scale 2.0 of an image whose long side is the base: OpenCV averages 2x2 blocks, not the taps."""
    plan = _plan((60, 80), (24, 32), "multiscale", 80, [0.5, 2.0], False)
    assert halves_both_sides(plan.scales[1].size, plan.image_size)
    assert uses_full_size(plan.scales, plan.image_size, 11)
    logits = make_logits("smooth", plan.num_tiles, 11, plan.tile, seed=4)
    np.testing.assert_array_equal(stitch_labels(plan, logits), oracle_labels(plan, logits))


# --- the pieces -----------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [2, 5, 11, 128, 150, 300])
@pytest.mark.parametrize(("src", "dst"), [
    ((13, 17), (200, 171)),  # 15x up: the unclamped border rows weigh row 0 against itself
    ((101, 87), (40, 33)),  # down
    ((37, 53), (37, 90)),  # one axis unchanged
    ((60, 80), (59, 161)),  # barely down on one axis, 2x up on the other
])
def test_taps_are_opencvs_arithmetic(channels: int, src: tuple[int, int], dst: tuple[int, int]) -> None:
    a = np.random.default_rng(channels).random((*src, channels))
    assert opencv_is_separable(channels, src, dst)
    expected = resize_linear(a, dst).transpose(2, 0, 1)
    chw = np.ascontiguousarray(a.transpose(2, 0, 1))
    np.testing.assert_array_equal(apply_taps(chw, *resize_taps(src, dst)), expected)


def test_the_probe_finds_opencvs_other_code_paths() -> None:
    a = np.random.default_rng(0).random((31, 41, 4))
    differs = not np.array_equal(apply_taps(a.transpose(2, 0, 1), *resize_taps((31, 41), (70, 90))),
                                 cv2.resize(a, (90, 70), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1))
    assert opencv_is_separable(4, (31, 41), (70, 90)) == (not differs)
    assert not opencv_is_separable(11, (62, 82), (31, 41))  # a halving
    assert opencv_is_separable(11, (62, 82), (62, 82))  # no resize at all
    taps = identity_taps(5)
    assert taps.identity and taps.size == 5


@pytest.mark.parametrize("classes", [7, 150, 300])
@pytest.mark.parametrize("flip", [False, True])
def test_both_layouts_hold_the_same_probabilities(classes: int, flip: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The label stitcher's softmax in strips of rows (here 4) gives the whole tile's numbers."""
    monkeypatch.setattr(stitch_probs, "STRIP_VALUES", classes * 45 * 4)
    plan = _plan((50, 80), (45, 45), "multiscale", 64, [0.8, 1.3], flip)
    assert stitch_probs.strip_rows(classes, plan.tile) == 4
    logits = make_logits("random", plan.num_tiles, classes, plan.tile, seed=5)
    for geom in plan.scales:
        chw = scale_probs_chw(geom, plan.tile, logits)
        hwc = np.concatenate([p for _, p in scale_probs_hwc(geom, plan.tile, logits)], axis=2)
        np.testing.assert_array_equal(chw, hwc.transpose(2, 0, 1))


def test_rankings_and_block_labels() -> None:
    rng = np.random.default_rng(6)
    probs = rng.integers(0, 6, size=(9, 20, 30)).astype(np.float64)  # ties everywhere
    probs[:, :10, :15] = 0
    probs[4, :10, :15] = 1  # a block where class 4 leads everywhere
    rows, cols = resize_taps((20, 30), (80, 120))
    rank = summarise(probs, rows, cols)
    np.testing.assert_array_equal(rank.top1, probs.argmax(axis=0))
    ordered = -np.sort(-probs, axis=0)
    second = np.take_along_axis(probs, rank.top2[None].astype(np.intp), 0)[0]
    np.testing.assert_array_equal(second, ordered[1])
    assert np.all(rank.top2 != rank.top1)
    third = ordered[2]
    block_third = np.maximum.reduce([third[:-1, :-1], third[1:, :-1], third[:-1, 1:], third[1:, 1:]])
    np.testing.assert_array_equal(rank.block_third[:-1, :-1], block_third.astype(np.float32))
    # proven: the same first class and a lead at the pixel, the next column, the next row and both
    lead = np.where(ordered[0] > ordered[1], probs.argmax(axis=0), -1)
    lead = np.pad(lead, ((0, 1), (0, 1)), mode="edge")
    block = [lead[:-1, :-1], lead[:-1, 1:], lead[1:, :-1], lead[1:, 1:]]
    expected = np.where(np.all([b == block[0] for b in block], axis=0), block[0], -1)
    np.testing.assert_array_equal(rank.block_label, expected)
    assert np.all(rank.block_label[:9, :14] == 4)
