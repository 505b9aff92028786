"""The table of output formats: every entry encodes as it says, and a new entry is all a format needs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import main
from service.codec.encode import encode_overlay
from service.codec.outputs import (
    FORMATS,
    OUTPUTS,
    Encoded,
    OutputFormat,
    OutputOptions,
    encode_output,
    output_format,
)
from service.errors import BadRequest
from service.settings import Settings
from tests.service.api_client import png_bytes, serving
from tests.service.tiny_model import tiny_meta

META = tiny_meta(num_classes=5)
RGB = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
LABELS = np.random.default_rng(1).integers(0, 5, (12, 20), dtype=np.uint8)


@pytest.mark.parametrize("name", OUTPUTS)
def test_every_format_answers_with_a_media_type_and_suffix_it_declares(name: str) -> None:
    for fmt in ("jpeg", "png"):
        out = encode_output(name, META, RGB, LABELS, OutputOptions(overlay_format=fmt, include_mask=True))
        assert out.media_type in FORMATS[name].media_types
        assert out.suffix == {"image/png": ".png", "image/jpeg": ".jpg", "application/json": ".json"}[
            out.media_type]


def test_options_reach_the_encoders() -> None:
    opts = OutputOptions(overlay_alpha=0.2, jpeg_quality=55, overlay_format="jpeg")
    got = encode_output("overlay", META, RGB, LABELS, opts)
    assert got.body == encode_overlay(RGB, LABELS, META.palette, alpha=0.2, fmt="jpeg", quality=55)
    png = encode_output("overlay", META, RGB, LABELS, OutputOptions(overlay_format="png"))
    assert Image.open(io.BytesIO(png.body)).format == "PNG"
    plain = json.loads(encode_output("json", META, RGB, LABELS, OutputOptions()).body)
    with_mask = json.loads(encode_output("json", META, RGB, LABELS, OutputOptions(include_mask=True)).body)
    assert "mask" not in plain and "mask" in with_mask
    assert plain["classes"] == with_mask["classes"]


def test_options_come_from_the_settings_and_the_request(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    s = Settings(model=model, overlay_alpha=0.25, jpeg_quality=60)
    o = OutputOptions.from_settings(s, overlay_format="png", include_mask=True)
    assert o == OutputOptions(overlay_alpha=0.25, jpeg_quality=60, overlay_format="png", include_mask=True)


def test_every_option_a_format_names_is_an_option() -> None:
    fields = set(OutputOptions.__dataclass_fields__)
    for f in FORMATS.values():
        assert set(f.options) <= fields, f.name


def test_an_unknown_format_is_a_400_naming_the_choices() -> None:
    with pytest.raises(BadRequest, match="color, label, overlay, json"):
        output_format("svg")


def _inverted(meta: object, rgb: np.ndarray, labels: np.ndarray, opts: OutputOptions) -> Encoded:
    return Encoded((255 - labels).astype(np.uint8).tobytes(), "application/octet-stream", ".raw")


@pytest.fixture
def extra_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new format, added the way the table says: one entry and its encoder, nothing else."""
    monkeypatch.setitem(FORMATS, "raw", OutputFormat("raw", "inverted ids, raw bytes",
                                                     ("application/octet-stream",), (), _inverted))


@pytest.mark.anyio
async def test_a_new_table_entry_is_served_over_http(extra_format: None, model: Path) -> None:
    async with serving(model) as c:
        labels = await c.post("/v1/segment?output=label", content=png_bytes(30, 40),
                              headers={"content-type": "image/png"})
        raw = await c.post("/v1/segment?output=raw", content=png_bytes(30, 40),
                           headers={"content-type": "image/png"})
        listed = (await c.get("/v1/models")).json()["models"][0]["outputs"]
        schema = (await c.get("/openapi.json")).json()
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/octet-stream"
    ids = np.asarray(Image.open(io.BytesIO(labels.content)))
    assert raw.content == (255 - ids).astype(np.uint8).tobytes()
    assert "raw" in listed
    params = schema["paths"]["/v1/segment"]["post"]["parameters"]
    assert "raw" in next(p for p in params if p["name"] == "output")["schema"]["enum"]


def test_a_new_table_entry_is_written_by_segment(extra_format: None, model: Path, tmp_path: Path) -> None:
    img = tmp_path / "in" / "a.png"
    img.parent.mkdir()
    img.write_bytes(png_bytes(30, 40))
    out = tmp_path / "out"
    assert main(["segment", str(img), "--out", str(out), "--output", "raw", "--model", str(model)]) == 0
    assert main(["segment", str(img), "--out", str(out), "--output", "label", "--model", str(model)]) == 0
    ids = np.asarray(Image.open(out / "a.png"))
    assert (out / "a.raw").read_bytes() == (255 - ids).astype(np.uint8).tobytes()
