"""Unit tests of the inference protocols: window geometry, tile planning, stitching, resizing.

The stitcher is checked against a direct transcription of the official loops
(hszhao/semseg ``tool/test.py``: ``test`` / ``scale_process`` / ``net_process``)
written here in plain numpy, fed by a small deterministic "network" that is
not mirror-symmetric (so flip pairing and mirroring back are really exercised).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from service.protocol.plan import TilePlan, plan_tiles
from service.protocol.probs import softmax
from service.protocol.resize import CV_MAX_CHANNELS, resize_linear
from service.protocol.stitch import stitch_labels, summed_probs
from service.protocol.windows import count_tiles, plan_geometry, scaled_size, window_starts
from tests.bounds import within
from tests.service.stitch_oracle import stitch_float32, stitch_float64

MEAN = (123.675, 116.28, 103.53)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# --- window geometry -----------------------------------------------------------------------------

@pytest.mark.parametrize(("length", "tile", "stride"), [
    (473, 473, 316), (474, 473, 316), (512, 473, 316), (789, 473, 316), (790, 473, 316),
    (2048, 713, 476), (256, 233, 156), (448, 233, 156), (100, 7, 5), (100, 7, 7), (100, 7, 1),
])
def test_windows_cover_everything_and_the_last_is_flush(length: int, tile: int, stride: int) -> None:
    starts = window_starts(length, tile, stride)
    assert len(starts) == math.ceil((length - tile) / stride) + 1
    assert starts[0] == 0
    assert starts[-1] == length - tile  # flush with the far edge
    steps = np.diff(starts)
    assert np.all(steps[:-1] == stride) if len(steps) > 1 else True
    assert np.all((steps > 0) & (steps <= stride))  # no duplicate, no gap larger than a stride
    covered = np.zeros(length, dtype=int)
    for s in starts:
        covered[s:s + tile] += 1
    assert covered.min() >= 1


def test_window_examples_from_the_paper_settings() -> None:
    # 512 long side, tile 473, stride ceil(473 * 2/3) = 316: two windows, the second flush at 39
    assert window_starts(512, 473, 316) == (0, 39)
    # Cityscapes: 2048 wide, tile 713, stride 476: 0, 476, 952, then 1335 (= 2048 - 713)
    assert window_starts(2048, 713, 476) == (0, 476, 952, 1335)
    with pytest.raises(ValueError):
        window_starts(100, 101, 10)


def test_scaled_size_rounds_like_python_and_keeps_aspect() -> None:
    assert scaled_size(150, 200, 1.0, 256) == (192, 256)  # landscape: width is the long side
    assert scaled_size(200, 150, 1.0, 256) == (256, 192)  # portrait
    assert scaled_size(100, 100, 0.75, 256) == (192, 192)  # square
    # Python's round ties to even: 0.5 * 255 = 127.5 -> 128, 0.5 * 253 = 126.5 -> 126
    assert scaled_size(10, 20, 0.5, 255) == (64, 128)
    assert scaled_size(10, 20, 0.5, 253) == (63, 126)  # 126 / 20 * 10 = 63
    with pytest.raises(ValueError):
        scaled_size(1, 1000, 0.1, 100)  # short side rounds to 0


def test_geometry_pads_centred_and_counts_tiles() -> None:
    # 150x200 at base 256, tile 233: scale 1.0 -> 192x256, padded to 233 rows, 41 rows of padding
    g = plan_geometry(150, 200, tile=(233, 233), mode="slide", base_size=256, flip=True)
    assert len(g) == 1
    s = g[0]
    assert s.size == (192, 256) and s.canvas == (233, 256)
    assert s.pad == (20, 0)  # int(41 / 2) on top, 21 below
    assert s.rows == (0,) and s.cols == (0, 23)
    assert s.num_tiles == 4 and count_tiles(g) == 4
    ms = plan_geometry(150, 200, tile=(233, 233), mode="multiscale", base_size=256, flip=True)
    assert [m.scale for m in ms] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    firsts = [m.first for m in ms]
    assert firsts == list(np.cumsum([0] + [m.num_tiles for m in ms[:-1]]))
    assert count_tiles(ms) == sum(m.num_tiles for m in ms)
    # stride is ceil(tile * 2/3), per axis
    g2 = plan_geometry(700, 1000, tile=(100, 130), mode="slide", base_size=1000)
    assert np.all(np.diff(g2[0].rows)[:-1] == 67) and np.all(np.diff(g2[0].cols)[:-1] == 87)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"mode": "bogus"}, "mode"),
    ({"mode": "whole", "scales": [0.5, 1.0]}, "whole"),
    ({"mode": "slide", "scales": []}, "scales"),
    ({"mode": "slide", "scales": [1.0, -0.5]}, "scales"),
    ({"mode": "slide", "stride_rate": 0.0}, "stride_rate"),
    ({"mode": "slide", "base_size": 0}, "base_size"),
    ({"mode": "slide", "tile": (0, 10)}, "tile"),
])
def test_impossible_arguments_are_value_errors(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"tile": (32, 32), "base_size": 64}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        plan_tiles(_image(20, 30), **args)  # type: ignore[arg-type]


# --- tile planning -------------------------------------------------------------------------------

def test_slide_tiles_are_windows_of_the_mean_padded_float_resize() -> None:
    img = _image(50, 80)
    plan = plan_tiles(img, tile=(45, 45), mode="slide", base_size=64, flip=True, mean=MEAN)
    (g,) = plan.scales
    assert g.size == (40, 64) and g.pad == (2, 0) and g.canvas == (45, 64)
    assert plan.tiles.dtype == np.float32 and plan.tiles.flags.c_contiguous
    assert plan.tiles.shape == (2 * g.num_windows, 3, 45, 45)
    # the straightforward way: float first, cv2 resize, cv2 mean border, crop windows
    scaled = cv2.resize(img.astype(np.float32), (64, 40), interpolation=cv2.INTER_LINEAR)
    padded = cv2.copyMakeBorder(scaled, 2, 3, 0, 0, cv2.BORDER_CONSTANT, value=MEAN)
    k = 0
    for y in g.rows:
        for x in g.cols:
            window = padded[y:y + 45, x:x + 45].transpose(2, 0, 1)
            np.testing.assert_array_equal(plan.tiles[k], window)
            np.testing.assert_array_equal(plan.tiles[k + 1], window[:, :, ::-1])  # its mirror, right after it
            k += 2
    # raw 0..255 values, padding exactly the mean colour
    np.testing.assert_array_equal(plan.tiles[0, :, 0, 0], np.asarray(MEAN, dtype=np.float32))
    # resizing the uint8 image instead would round: the plan does not do that
    rounded = cv2.resize(img, (64, 40), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    assert not np.array_equal(plan.tiles[0, :, 2:42], rounded[:, :45].transpose(2, 0, 1))


def test_whole_mode_is_one_tile_of_the_image_resized_without_keeping_aspect() -> None:
    img = _image(70, 50)
    plan = plan_tiles(img, tile=(32, 48), mode="whole", flip=False)
    assert plan.tiles.shape == (1, 3, 32, 48)
    expected = cv2.resize(img.astype(np.float32), (48, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(plan.tiles[0], expected.transpose(2, 0, 1))
    flipped = plan_tiles(img, tile=(32, 48), mode="whole", flip=True, scales=[1.0])
    assert flipped.tiles.shape == (2, 3, 32, 48)
    np.testing.assert_array_equal(flipped.tiles[1], flipped.tiles[0][:, :, ::-1])
    logits = np.random.default_rng(1).standard_normal((1, 5, 32, 48)).astype(np.float32)
    probs = stitch_float32(plan, logits)
    assert probs.shape == (70, 50, 5) and probs.dtype == np.float32
    expected_probs = cv2.resize(softmax(logits)[0].transpose(1, 2, 0).astype(np.float64), (50, 70),
                                interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(probs, expected_probs.astype(np.float32))


# --- stitching against the official loops ----------------------------------------------------------

class ToyNet:
    """Deterministic per-tile logits: a per-pixel linear map plus one of the right-hand neighbour.

    The neighbour term makes the output change under mirroring, as a real network's does.
    """

    def __init__(self, classes: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        # logits spread over a unit or two: probabilities neither one-hot nor flat
        self.a = rng.standard_normal((classes, 3)).astype(np.float32) / 150
        self.b = rng.standard_normal((classes, 3)).astype(np.float32) / 150
        self.c = rng.standard_normal(classes).astype(np.float32) / 5

    def __call__(self, tiles: np.ndarray) -> np.ndarray:  # (N, 3, h, w) -> (N, C, h, w)
        tiles = tiles - np.float32(127.5)
        right = np.roll(tiles, -1, axis=3)
        out: np.ndarray = (np.einsum("ck,nkhw->nchw", self.a, tiles)
                           + np.einsum("ck,nkhw->nchw", self.b, right) + self.c[None, :, None, None])
        return out.astype(np.float32)


def official_predict(image: np.ndarray, net: ToyNet, classes: int, *, base_size: int, crop: tuple[int, int],
                     scales: list[float], mean: tuple[float, float, float], flip: bool,
                     stride_rate: float = 2 / 3) -> np.ndarray:
    """The official test procedure, transcribed loop for loop (numpy softmax instead of torch)."""
    image = image.astype(np.float32)
    h, w, _ = image.shape
    crop_h, crop_w = crop
    prediction = np.zeros((h, w, classes), dtype=float)
    for scale in scales:
        long_size = round(scale * base_size)
        new_h = new_w = long_size
        if h > w:
            new_w = round(long_size / float(h) * w)
        else:
            new_h = round(long_size / float(w) * h)
        image_scale = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        ori_h, ori_w, _ = image_scale.shape
        pad_h, pad_w = max(crop_h - ori_h, 0), max(crop_w - ori_w, 0)
        pad_h_half, pad_w_half = int(pad_h / 2), int(pad_w / 2)
        if pad_h > 0 or pad_w > 0:
            image_scale = cv2.copyMakeBorder(image_scale, pad_h_half, pad_h - pad_h_half, pad_w_half,
                                             pad_w - pad_w_half, cv2.BORDER_CONSTANT, value=mean)
        new_h, new_w, _ = image_scale.shape
        stride_h, stride_w = int(np.ceil(crop_h * stride_rate)), int(np.ceil(crop_w * stride_rate))
        grid_h = int(np.ceil(float(new_h - crop_h) / stride_h) + 1)
        grid_w = int(np.ceil(float(new_w - crop_w) / stride_w) + 1)
        prediction_crop = np.zeros((new_h, new_w, classes), dtype=float)
        count_crop = np.zeros((new_h, new_w), dtype=float)
        for index_h in range(grid_h):
            for index_w in range(grid_w):
                e_h = min(index_h * stride_h + crop_h, new_h)
                e_w = min(index_w * stride_w + crop_w, new_w)
                s_h, s_w = e_h - crop_h, e_w - crop_w
                x = image_scale[s_h:e_h, s_w:e_w].transpose(2, 0, 1)[None]
                if flip:
                    x = np.concatenate([x, x[:, :, :, ::-1]])
                out = net(np.ascontiguousarray(x))
                e = np.exp(out - out.max(axis=1, keepdims=True))
                out = e / e.sum(axis=1, keepdims=True)
                out = (out[0] + out[1][:, :, ::-1]) / 2 if flip else out[0]
                count_crop[s_h:e_h, s_w:e_w] += 1
                prediction_crop[s_h:e_h, s_w:e_w, :] += out.transpose(1, 2, 0)
        prediction_crop /= np.expand_dims(count_crop, 2)
        prediction_crop = prediction_crop[pad_h_half:pad_h_half + ori_h, pad_w_half:pad_w_half + ori_w]
        # cv2.resize itself; resize_linear only where OpenCV 5 refuses the channel count
        prediction += (cv2.resize(prediction_crop, (w, h), interpolation=cv2.INTER_LINEAR)
                       if classes <= CV_MAX_CHANNELS else resize_linear(prediction_crop, (h, w)))
    prediction /= len(scales)
    return prediction


@pytest.mark.parametrize(("size", "tile", "base", "scales", "flip", "classes"), [
    ((50, 80), (45, 45), 64, [1.0], True, 7),  # padding on one axis, two windows on the other
    ((50, 80), (45, 45), 64, [1.0], False, 7),
    ((80, 50), (30, 40), 90, [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], True, 7),  # portrait, odd tile, padding
    ((33, 33), (24, 24), 100, [0.3, 1.0, 1.7], True, 7),  # many windows in both directions
    ((64, 64), (64, 64), 64, [1.0], False, 7),  # exactly one tile, nothing resized
    ((40, 50), (24, 24), 60, [0.6, 1.3], True, 150),  # ADE20K's 150 classes: kept in channel ranges
])
def test_stitch_matches_the_official_loops(size: tuple[int, int], tile: tuple[int, int], base: int,
                                           scales: list[float], flip: bool, classes: int) -> None:
    img = _image(*size, seed=3)
    net = ToyNet(classes)
    expected = official_predict(img, net, classes, base_size=base, crop=tile, scales=scales, mean=MEAN,
                                flip=flip)
    plan = plan_tiles(img, tile=tile, mode="multiscale", scales=scales, flip=flip, base_size=base, mean=MEAN)
    got = stitch_float64(plan, net(plan.tiles))
    assert got.shape == (*size, classes)
    # the same additions in the same order (and the same numpy softmax): equal to the last bit
    np.testing.assert_array_equal(got, expected)
    assert np.allclose(got.sum(axis=2), 1.0, atol=1e-6)


def test_stitch_labels_is_the_argmax_of_the_float64_probabilities() -> None:
    img = _image(40, 60, seed=5)
    net = ToyNet(7)
    plan = plan_tiles(img, tile=(32, 32), mode="multiscale", scales=[0.75, 1.25], flip=True, base_size=60,
                      mean=MEAN)
    logits = net(plan.tiles)
    labels = stitch_labels(plan, logits)
    assert labels.dtype == np.uint8 and labels.shape == (40, 60)
    np.testing.assert_array_equal(labels, stitch_float64(plan, logits).argmax(axis=2))
    assert len(np.unique(labels)) > 1
    # 300 classes (three channel ranges), every class repeated: exact ties, the first one wins
    many_logits = np.repeat(logits, 43, axis=1)[:, :300]
    many = stitch_labels(plan, many_logits)
    assert many.dtype == np.uint16
    np.testing.assert_array_equal(many, stitch_float64(plan, many_logits).argmax(axis=2))
    # copies of a class tie exactly, also across channel ranges (86..128 straddles 100): the first wins
    assert np.all(many % 43 == 0)
    assert np.any((many == 86) | (many == 129) | (many == 172))


def test_stitch_rejects_logits_that_do_not_fit_the_plan() -> None:
    plan = plan_tiles(_image(20, 30), tile=(16, 16), mode="slide", base_size=30, flip=True)
    good = np.zeros((plan.num_tiles, 4, 16, 16), dtype=np.float32)
    stitch_labels(plan, good)
    summed_probs(plan, good)
    for bad in (good[:-1], good[:, :, :8], good[0]):
        with pytest.raises(ValueError):
            stitch_labels(plan, bad)
        with pytest.raises(ValueError):
            summed_probs(plan, bad)


def test_softmax_is_per_pixel_over_classes() -> None:
    x = np.random.default_rng(2).standard_normal((2, 5, 3, 4)).astype(np.float32) * 30
    p = softmax(x)
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    # float32 arithmetic against float64: measured 6e-8
    within("tiling.softmax_f32", np.abs(p - e / e.sum(axis=1, keepdims=True)).max(), 2e-7)
    assert p.dtype == np.float32


def test_plan_is_a_frozen_record() -> None:
    plan = plan_tiles(_image(20, 30), tile=(16, 16), mode="whole")
    assert isinstance(plan, TilePlan) and plan.num_tiles == 1
    with pytest.raises(AttributeError):
        plan.flip = True  # type: ignore[misc]


# --- bilinear resize -------------------------------------------------------------------------------

def opencv_linear_reference(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """OpenCV's own (non-IPP) INTER_LINEAR written out in numpy, any channel count.

    Source coordinate ``(d + 0.5) * in / out - 0.5`` rounded to float32, clamped to the
    edges; float32 weights; arithmetic in float64 for float64 data.
    """
    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        f = ((np.arange(n_out) + 0.5) * (1.0 / (n_out / n_in)) - 0.5).astype(np.float32)
        i0 = np.floor(f).astype(np.int64)
        f = f - i0.astype(np.float32)
        f[i0 < 0] = 0
        i0[i0 < 0] = 0
        f[i0 >= n_in - 1] = 0
        i0[i0 >= n_in - 1] = n_in - 1
        return i0, np.minimum(i0 + 1, n_in - 1), (np.float32(1) - f).astype(a.dtype), f.astype(a.dtype)

    y0, y1, wy0, wy1 = axis(a.shape[0], size[0])
    x0, x1, wx0, wx1 = axis(a.shape[1], size[1])
    rows = a[:, x0] * wx0[None, :, None] + a[:, x1] * wx1[None, :, None]
    out: np.ndarray = rows[y0] * wy0[:, None, None] + rows[y1] * wy1[:, None, None]
    return out


@pytest.mark.parametrize("channels", [1, 3, 4, 19, CV_MAX_CHANNELS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_resize_is_cv2_up_to_its_channel_limit(channels: int, dtype: type) -> None:
    a: np.ndarray = np.random.default_rng(channels).random((37, 53, channels)).astype(dtype)
    for size in [(60, 71), (20, 26), (37, 53), (37, 90)]:
        got = resize_linear(a, size)
        assert got.shape == (*size, channels) and got.dtype == dtype
        np.testing.assert_array_equal(got, cv2.resize(a, size[::-1], interpolation=cv2.INTER_LINEAR)
                                      .reshape(*size, channels))
    flat = a[:, :, 0].copy()
    np.testing.assert_array_equal(resize_linear(flat, (60, 71)),
                                  cv2.resize(flat, (71, 60), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize("channels", [CV_MAX_CHANNELS + 1, 150, 300])
def test_resize_beyond_cv2s_channel_limit_equals_an_unchunked_reference(channels: int) -> None:
    a = np.random.default_rng(channels).random((41, 57, channels))
    for size in [(97, 130), (20, 33)]:
        got = resize_linear(a, size)
        assert got.shape == (*size, channels) and got.dtype == np.float64
        # whole-array reference of OpenCV's algorithm: measured max difference 1.1e-16 (one ulp)
        within("tiling.resize_vs_reference", np.abs(got - opencv_linear_reference(a, size)).max(), 3e-16)
        # and any grouping of channels that cv2 accepts gives the same numbers, bit for bit
        for lo, hi in [(0, CV_MAX_CHANNELS), (channels - CV_MAX_CHANNELS, channels), (7, 70)]:
            part = np.ascontiguousarray(a[:, :, lo:hi])
            np.testing.assert_array_equal(got[:, :, lo:hi],
                                          cv2.resize(part, size[::-1], interpolation=cv2.INTER_LINEAR))


def test_resize_rejects_impossible_sizes() -> None:
    with pytest.raises(ValueError):
        resize_linear(np.zeros((4, 4, 2)), (0, 3))
    with pytest.raises(ValueError):
        resize_linear(np.zeros((4,)), (3, 3))
