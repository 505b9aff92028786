"""Dataset metadata: classes, palettes and the per-source defaults docs/DESIGN.md lists."""

from __future__ import annotations

import pytest

from model.datasets import dataset_info, dataset_names

CLASSES = {"ade20k": 150, "voc2012": 21, "cityscapes": 19, "camvid": 11}

# docs/DESIGN.md "Defaults per source": (dataset, source) -> (tile, base size)
DEFAULTS = {
    ("ade20k", "semseg"): ((473, 473), 512),
    ("voc2012", "semseg"): ((473, 473), 512),
    ("cityscapes", "semseg"): ((713, 713), 2048),
    ("ade20k", "mmseg"): ((512, 512), 512),
    ("voc2012", "mmseg"): ((512, 512), 512),
    ("cityscapes", "mmseg"): ((512, 1024), 1024),
    ("camvid", "semseg"): ((360, 480), 480),
    ("camvid", "mmseg"): ((360, 480), 480),
    ("camvid", "native"): ((360, 480), 480),
}


def test_known_datasets() -> None:
    assert dataset_names() == sorted(CLASSES)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_classes_and_palette(name: str) -> None:
    info = dataset_info(name, "semseg")
    assert info.num_classes == CLASSES[name]
    assert len(set(info.classes)) == info.num_classes, "class names must be unique"
    assert all(c == c.strip() and c for c in info.classes)
    assert len(info.palette) == info.num_classes
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in info.palette)


@pytest.mark.parametrize(("name", "source"), sorted(DEFAULTS))
def test_defaults_per_source(name: str, source: str) -> None:
    info = dataset_info(name, source)
    assert (info.tile, info.base_size) == DEFAULTS[name, source]
    # a request's defaults: single scale, no flip (docs/DESIGN.md "Inference protocols")
    assert (info.mode, info.scales, info.flip) == ("slide", (1.0,), False)
    assert info.stride_rate == pytest.approx(2 / 3)


def test_published_colours() -> None:
    """Spot checks against the published palettes (MMSegmentation, Cityscapes, VOC devkit)."""
    assert dataset_info("ade20k").palette[:2] == ((120, 120, 120), (180, 120, 120))
    assert dataset_info("ade20k").classes[:3] == ("wall", "building", "sky")
    city = dataset_info("cityscapes")
    assert dict(zip(city.classes, city.palette, strict=True))["road"] == (128, 64, 128)
    assert dict(zip(city.classes, city.palette, strict=True))["bicycle"] == (119, 11, 32)
    voc = dataset_info("voc2012")
    assert voc.classes[0] == "background" and voc.palette[0] == (0, 0, 0)
    assert dict(zip(voc.classes, voc.palette, strict=True))["person"] == (192, 128, 128)


def test_native_checkpoints_fall_back_to_official_defaults() -> None:
    assert dataset_info("cityscapes", "native") == dataset_info("cityscapes", "semseg")


def test_unknown_dataset() -> None:
    with pytest.raises(KeyError, match="unknown dataset 'coco'"):
        dataset_info("coco")
