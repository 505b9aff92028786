"""``pspnet-serve segment``: the chain on files, with the server's settings for the outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.cli import main
from service.codec.decode import NO_LIMITS, DecodeLimits
from service.codec.encode import encode_overlay
from service.engine.sessions import Engine
from service.offline import work
from service.offline.inputs import read_image
from service.offline.work import Decoded, Job
from service.pipeline.chain import Chain
from service.pipeline.params import InferenceParams, resolve
from service.pipeline.runner import EngineRunner
from tests.service.api_client import png_bytes
from tests.service.bulk_files import outputs, tree


def labels_alone(engine: Engine, rgb: np.ndarray, params: InferenceParams) -> np.ndarray:
    """The chain's labels of one image on its own (four tiles a batch)."""
    return Chain(engine.meta, NO_LIMITS).labels_now(rgb, params, runner=EngineRunner(engine, 4))[0]


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
    assert sorted(p.name for p in out.iterdir()) == [f"img0{suffix}", f"img1{suffix}", "manifest.jsonl"]


def test_labels_are_the_chains(model: Path, images: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["segment", str(images[1]), "--out", str(out), "--output", "label", "--model", str(model),
                 "--mode", "multiscale", "--scales", "0.75,1.25", "--flip"]) == 0
    engine = Engine(model, provider="cpu")
    params = resolve(engine.meta.protocol, mode="multiscale", flip=True, scales="0.75,1.25", max_scales=8)
    expected = labels_alone(engine, read_image(images[1]).rgb, params)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "img1.png")), expected)


def test_device_stitch_on_stitches_every_image_on_the_device(model: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """``--device-stitch on`` (ONNX Runtime's CPU provider standing in for CUDA): images whose tiles share
    batches of 3 (a window's mirror in the next batch) are stitched on the device, within the rule of
    tests/service/engine/test_device_stitch.py; ``off`` keeps the exact host stitch."""
    src = tmp_path / "in"
    src.mkdir()
    for i, (h, w) in enumerate([(45, 61), (52, 70), (33, 90)]):
        (src / f"img{i}.png").write_bytes(png_bytes(h, w, seed=i + 10))
    made: list[int] = []
    real = work.DeviceStitching.stitcher

    def counted(self: Any, *args: Any) -> Any:
        got = real(self, *args)
        made.append(got is not None)
        return got

    monkeypatch.setattr(work.DeviceStitching, "stitcher", counted)
    flags = ["--output", "label", "--model", str(model), "--mode", "multiscale", "--scales", "0.75,1.25",
             "--flip", "--max-batch", "3"]
    assert main(["segment", str(src), "--out", str(tmp_path / "on"), *flags, "--device-stitch", "on"]) == 0
    assert made == [True, True, True]
    assert main(["segment", str(src), "--out", str(tmp_path / "off"), *flags, "--device-stitch", "off"]) == 0
    assert len(made) == 3
    engine = Engine(model, provider="cpu")
    params = resolve(engine.meta.protocol, mode="multiscale", flip=True, scales="0.75,1.25", max_scales=8)
    for i in range(3):
        exact = labels_alone(engine, read_image(src / f"img{i}.png").rgb, params)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "off" / f"img{i}.png")), exact)
        on_device = np.asarray(Image.open(tmp_path / "on" / f"img{i}.png"))
        # the tiny model's labels never tie within float32 rounding here: none moved (measured)
        np.testing.assert_array_equal(on_device, exact)


def test_overlay_takes_the_settings_from_env_and_flags(model: Path, images: list[Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSPNET_JPEG_QUALITY", "40")
    out = tmp_path / "out"
    assert main(["segment", str(images[0]), "--out", str(out), "--output", "overlay", "--model", str(model),
                 "--overlay-alpha", "0.8"]) == 0
    engine = Engine(model, provider="cpu")
    rgb = read_image(images[0]).rgb
    labels = labels_alone(engine, rgb, resolve(engine.meta.protocol, mode=None, flip=None, scales=None,
                                               max_scales=8))
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
    assert f"failed: {broken}: " in captured.err  # named on stderr, the run went on
    doc = json.loads((out / "img0.json").read_text())
    assert doc["width"] == 40 and "mask" in doc
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["input"], r["status"]) for r in lines] == [(str(broken), "error"), (str(images[0]), "ok")]


# --- bulk: folders, patterns, layout, manifest, resume ---------------------------------------------

def manifest(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]




def test_a_folder_is_read_recursively_and_its_layout_mirrored(model: Path, tmp_path: Path) -> None:
    src = tree(tmp_path / "in", {"a/x.png": png_bytes(30, 40, seed=1), "b/x.png": png_bytes(30, 40, seed=2),
                                 "b/c/y.png": png_bytes(20, 20, seed=3), "b/notes.txt": b"not an image"})
    out = tmp_path / "out"
    assert main(["segment", str(src), "--out", str(out), "--output", "label", "--model", str(model)]) == 0
    written = outputs(out)
    assert sorted(written) == ["a/x.png", "b/c/y.png", "b/x.png"]  # one name, two folders: both kept
    assert written["a/x.png"] != written["b/x.png"]
    engine = Engine(model, provider="cpu")
    params = resolve(engine.meta.protocol, mode=None, flip=None, scales=None, max_scales=8)
    for name in written:
        expected = labels_alone(engine, read_image(src / name).rgb, params)
        np.testing.assert_array_equal(np.asarray(Image.open(out / name)), expected)


def test_globs_and_files_share_one_root(model: Path, tmp_path: Path) -> None:
    src = tree(tmp_path / "in", {"p/one.png": png_bytes(20, 30, seed=1),
                                 "p/q/two.png": png_bytes(20, 30, seed=2), "p/q/skip.jpg": b"\xff\xd8 no",
                                 "r/three.png": png_bytes(20, 30, seed=3)})
    out = tmp_path / "out"
    assert main(["segment", str(src / "p" / "**" / "*.png"), str(src / "r" / "three.png"), "--out", str(out),
                 "--model", str(model)]) == 0
    assert sorted(outputs(out)) == ["p/one.png", "p/q/two.png", "r/three.png"]


def test_the_manifest_has_one_line_per_input(model: Path, tmp_path: Path) -> None:
    src = tree(tmp_path / "in", {"a.png": png_bytes(30, 40, seed=1), "b.png": png_bytes(50, 70, seed=2),
                                 "c.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 40})
    out = tmp_path / "out"
    assert main(["segment", str(src), "--out", str(out), "--model", str(model), "--max-batch", "3"]) == 1
    lines = manifest(out)
    assert [r["input"] for r in lines] == [str(src / n) for n in ("a.png", "b.png", "c.png")]
    assert all(set(r) == {"input", "output", "status", "width", "height", "seconds", "classes", "error"}
               for r in lines)
    a, b, c = lines
    assert (a["status"], a["output"], a["width"], a["height"], a["error"]) == ("ok", "a.png", 40, 30, None)
    assert (b["status"], b["width"], b["height"]) == ("ok", 70, 50)
    for r in (a, b):
        labels = np.asarray(Image.open(out / r["output"]))
        ids, counts = np.unique(labels, return_counts=True)
        assert r["classes"] == {str(k): n / labels.size for k, n in zip(ids, counts, strict=True)}
        assert r["seconds"] > 0
    assert (c["status"], c["output"], c["classes"]) == ("error", None, None) and c["error"]
    assert not list(out.rglob("*.tmp")) and not (out / ".manifest.jsonl.partial").exists()


def test_images_over_the_pixel_limit_are_recorded_and_skipped(model: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    src = tree(tmp_path / "in", {"small.png": png_bytes(30, 40, seed=1),
                                 "large.png": png_bytes(50, 70, seed=2)})
    out = tmp_path / "out"
    assert main(["segment", str(src), "--out", str(out), "--model", str(model), "--max-pixels", "2000"]) == 1
    large, small = manifest(out)
    assert (small["status"], large["status"]) == ("ok", "error")
    assert (large["width"], large["height"]) == (70, 50) and "limit is 2000" in large["error"]
    assert f"failed: {src / 'large.png'}" in capsys.readouterr().err
    assert sorted(outputs(out)) == ["small.png"]
    monkeypatch.setenv("PSPNET_MAX_PIXELS", "1000")  # the server's setting, as for the other settings
    assert main(["segment", str(src / "small.png"), "--out", str(tmp_path / "o2"),
                 "--model", str(model)]) == 1


def test_a_second_run_skips_what_is_done(model: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    src = tree(tmp_path / "in", {"a.png": png_bytes(30, 40, seed=1), "b.png": png_bytes(30, 40, seed=2)})
    out = tmp_path / "out"
    assert main(["segment", str(src / "a.png"), "--out", str(out), "--model", str(model)]) == 0
    first = manifest(out)[0]
    before = (out / "a.png").stat()
    capsys.readouterr()
    assert main(["segment", str(src), "--out", str(out), "--model", str(model)]) == 0
    assert "1 of 2 already done" in capsys.readouterr().err
    a, b = manifest(out)
    assert (a["status"], b["status"]) == ("skipped", "ok")
    assert (a["width"], a["height"], a["classes"]) == (first["width"], first["height"], first["classes"])
    after = (out / "a.png").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert main(["segment", str(src), "--out", str(out), "--model", str(model), "--overwrite"]) == 0
    assert [r["status"] for r in manifest(out)] == ["ok", "ok"]
    assert (out / "a.png").stat().st_ino != before.st_ino  # replaced by a rename, not rewritten in place
    assert (out / "a.png").read_bytes() == outputs(out)["a.png"]


def test_a_run_that_died_leaves_what_it_did_for_the_next(model: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    src = tree(tmp_path / "in", {"a.png": png_bytes(30, 40, seed=1), "b.png": png_bytes(30, 40, seed=2)})
    out = tmp_path / "out"
    real_decode = work.decode_input
    decoded: list[str] = []

    def decode_then_die(job: Job, data: bytes | None, limits: DecodeLimits) -> Decoded:
        if decoded:
            raise KeyboardInterrupt
        decoded.append(job.source)
        return real_decode(job, data, limits)

    monkeypatch.setattr(work, "decode_input", decode_then_die)
    with pytest.raises(KeyboardInterrupt):  # a's tiles fill a batch of one: a is written before b is read
        main(["segment", str(src), "--out", str(out), "--model", str(model), "--max-batch", "1"])
    assert not (out / "manifest.jsonl").exists() and (out / ".manifest.jsonl.partial").exists()
    monkeypatch.setattr(work, "decode_input", real_decode)
    assert main(["segment", str(src), "--out", str(out), "--model", str(model)]) == 0
    a, b = manifest(out)
    assert (a["status"], b["status"]) == ("skipped", "ok") and a["classes"]  # a's line came from the partial


@pytest.mark.parametrize("argv", [
    ["{src}/missing.png"],
    ["{src}/*.gif"],
    ["{src}", "--num-workers", "2"],  # a Ray flag without --ray
    ["{src}", "--ray", "--num-workers", "0"],
    ["{src}", "--model", "{src}/no_model.onnx"],
    ["{src}", "s3://bucket/frames"],  # local and URIs mixed
    ["{src}", "--out", "{src}/a.png"],  # --out is a file
])
def test_usage_errors_exit_2(model: Path, tmp_path: Path, argv: list[str]) -> None:
    src = tree(tmp_path / "in", {"a.png": png_bytes(30, 40)})
    args = [a.format(src=src) for a in argv]
    defaults = {"--out": str(tmp_path / "out"), "--model": str(model)}
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["segment", *args, *(x for flag, value in defaults.items()
                                                   if flag not in args for x in (flag, value))]))
    assert e.value.code == 2
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_an_input_is_never_overwritten_by_its_result(model: Path, tmp_path: Path) -> None:
    src = tree(tmp_path / "in", {"a.png": png_bytes(30, 40)})
    with pytest.raises(SystemExit) as e:
        main(["segment", str(src), "--out", str(src), "--output", "label", "--model", str(model)])
    assert e.value.code == 2
    assert (src / "a.png").read_bytes() == png_bytes(30, 40)


def test_outputs_inside_an_input_folder_are_not_read_back(model: Path, tmp_path: Path) -> None:
    src = tree(tmp_path / "in", {"a.png": png_bytes(30, 40)})
    assert main(["segment", str(src), "--out", str(src / "masks"), "--model", str(model)]) == 0
    assert main(["segment", str(src), "--out", str(src / "masks"), "--model", str(model)]) == 0
    assert [r["input"] for r in manifest(src / "masks")] == [str(src / "a.png")]


def test_ray_without_ray_installed_is_a_usage_error(model: Path, images: list[Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["segment", str(images[0]), "--out", str(tmp_path / "out"), "--model", str(model),
                 "--ray"]) == 2
    assert "pspnet-serving[ray]" in capsys.readouterr().err
