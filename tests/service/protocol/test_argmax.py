"""The fast class argmax and the one-window label path of the stitcher: the same labels, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from service.protocol import stitch as tiling
from service.protocol.argmax import argmax_classes
from service.protocol.plan import plan_tiles
from service.protocol.stitch import stitch_labels
from tests.service.stitch_oracle import stitch_float64

MEAN = (123.675, 116.28, 103.53)


@pytest.mark.parametrize(("classes", "dtype"), [(1, np.uint8), (11, np.uint8), (256, np.uint8),
                                                (300, np.uint16)])
def test_argmax_classes_is_numpys_argmax_ties_included(classes: int, dtype: type) -> None:
    rng = np.random.default_rng(classes)
    # few distinct values: exact ties everywhere, and the first class must win them
    probs = rng.integers(0, 4, size=(classes, 17, 23)).astype(np.float32)
    got = argmax_classes(probs, dtype)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, probs.argmax(axis=0))
    smooth = rng.random((classes, 9, 5))  # float64 too
    np.testing.assert_array_equal(argmax_classes(smooth, dtype), smooth.argmax(axis=0))


def test_argmax_classes_refuses_what_it_cannot_label() -> None:
    with pytest.raises(ValueError, match="C, H, W"):
        argmax_classes(np.zeros((4, 5), np.float32), np.uint8)
    with pytest.raises(ValueError, match="do not fit"):
        argmax_classes(np.zeros((257, 2, 2), np.float32), np.uint8)


def _logits(n: int, classes: int, tile: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # coarse values so that softmax produces exact ties between classes
    return rng.integers(-3, 3, size=(n, classes, *tile)).astype(np.float32) / 2


@pytest.mark.parametrize(("size", "mode", "flip", "classes"), [
    ((32, 48), "whole", False, 11),  # the served default: an image of the tile's size
    ((32, 48), "whole", True, 11),
    ((20, 30), "slide", False, 11),  # smaller than the tile: padded, one window, cropped
    ((20, 30), "slide", True, 300),  # 16-bit labels, several channel ranges in the slow path
])
def test_one_window_labels_equal_the_float64_argmax(monkeypatch: pytest.MonkeyPatch, size: tuple[int, int],
                                                    mode: str, flip: bool, classes: int) -> None:
    img = np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8)
    plan = plan_tiles(img, tile=(32, 48), mode=mode, flip=flip, base_size=max(size), mean=MEAN)  # type: ignore[arg-type]
    assert len(plan.scales) == 1 and plan.scales[0].num_windows == 1
    logits = _logits(plan.num_tiles, classes, (32, 48), seed=classes)
    expected = stitch_float64(plan, logits).argmax(axis=2)
    # the fast path must be the one taken
    assert tiling.Stitcher(plan.scales, plan.image_size, classes, plan.tile).route == "lone"
    got = stitch_labels(plan, logits)
    assert got.dtype == (np.uint8 if classes <= 256 else np.uint16)
    np.testing.assert_array_equal(got, expected)


def test_several_windows_or_a_resize_take_the_general_path() -> None:
    img = np.random.default_rng(2).integers(0, 256, (40, 90, 3), dtype=np.uint8)
    for plan in (plan_tiles(img, tile=(32, 48), mode="slide", base_size=90, mean=MEAN),  # 2x3 windows
                 plan_tiles(img, tile=(32, 48), mode="whole", mean=MEAN)):  # resized back to 40x90
        assert tiling.Stitcher(plan.scales, plan.image_size, 5, plan.tile).route != "lone"
