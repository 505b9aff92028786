"""``pspnet-serve segment``: the chain on files, with the server's settings for the outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.chain import labels_offline
from service.cli import main
from service.encode import encode_overlay
from service.engine import Engine
from service.offline import read_image
from service.params import resolve
from tests.service.api_client import png_bytes


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    paths = []
    for i, (h, w) in enumerate([(30, 40), (50, 70)]):
        p = tmp_path / "in" / f"img{i}.png"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(png_bytes(h, w, seed=i))
        paths.append(p)
    return paths


@pytest.mark.parametrize(("output", "suffix"), [("color", ".png"), ("label", ".png"), ("overlay", ".jpg"),
                                                ("json", ".json")])
def test_each_output_is_written_under_its_suffix(model: Path, images: list[Path], tmp_path: Path,
                                                 output: str, suffix: str) -> None:
    out = tmp_path / "out"
    assert main(["segment", *map(str, images), "--out", str(out), "--output", output,
                 "--model", str(model)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"img0{suffix}", f"img1{suffix}"]


def test_labels_are_the_chains(model: Path, images: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["segment", str(images[1]), "--out", str(out), "--output", "label", "--model", str(model),
                 "--mode", "multiscale", "--scales", "0.75,1.25", "--flip"]) == 0
    engine = Engine(model, provider="cpu")
    params = resolve(engine.meta.protocol, mode="multiscale", flip=True, scales="0.75,1.25", max_scales=8)
    expected = labels_offline(engine.meta, engine.run, read_image(images[1]).rgb, params, max_batch=4)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "img1.png")), expected)


def test_overlay_takes_the_settings_from_env_and_flags(model: Path, images: list[Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSPNET_JPEG_QUALITY", "40")
    out = tmp_path / "out"
    assert main(["segment", str(images[0]), "--out", str(out), "--output", "overlay", "--model", str(model),
                 "--overlay-alpha", "0.8"]) == 0
    engine = Engine(model, provider="cpu")
    rgb = read_image(images[0]).rgb
    labels = labels_offline(engine.meta, engine.run, rgb, resolve(engine.meta.protocol, mode=None, flip=None,
                                                                  scales=None, max_scales=8), max_batch=4)
    assert (out / "img0.jpg").read_bytes() == encode_overlay(rgb, labels, engine.meta.palette, alpha=0.8,
                                                              fmt="jpeg", quality=40)
    assert main(["segment", str(images[0]), "--out", str(out), "--output", "overlay", "--model", str(model),
                 "--overlay-format", "png"]) == 0
    assert Image.open(out / "img0.png").format == "PNG"


def test_a_bad_setting_is_a_usage_error(model: Path, images: list[Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["segment", str(images[0]), "--out", str(tmp_path), "--model", str(model),
              "--overlay-alpha", "3"])
    assert e.value.code == 2
    assert "PSPNET_OVERLAY_ALPHA" in capsys.readouterr().err


def test_an_unreadable_image_is_skipped_and_fails_the_run(model: Path, images: list[Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    broken = images[0].parent / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    out = tmp_path / "out"
    assert main(["segment", str(broken), str(images[0]), "--out", str(out), "--output", "json",
                 "--include-mask", "--model", str(model)]) == 1
    captured = capsys.readouterr()
    assert "skipped" in captured.out + captured.err and "broken.png" in captured.out + captured.err
    doc = json.loads((out / "img0.json").read_text())
    assert doc["width"] == 40 and "mask" in doc
