"""A directory of models behind one app: listing, routing by name, the default model, per-model
batchers and metric labels, and what a broken or duplicate file does."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.cli import main as cli_main
from service.repository.directory import RepositoryError
from tests.service.api_client import png_bytes, serving
from tests.service.tiny_model import build_tiny_artifact

PNG = {"content-type": "image/png"}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    build_tiny_artifact(tmp_path / "a.onnx", name="alpha", num_classes=5)
    build_tiny_artifact(tmp_path / "b.onnx", name="beta", num_classes=3)
    (tmp_path / "broken.onnx").write_bytes(b"\x00 not a model")
    return tmp_path


@pytest.mark.anyio
async def test_every_model_is_listed_and_served_by_name(repo: Path) -> None:
    async with serving(repo) as c:
        listing = (await c.get("/v1/models")).json()
        beta = await c.get("/v1/models/beta")
        missing = await c.get("/v1/models/gamma")
        img = png_bytes(40, 60, seed=1)
        a = await c.post("/v1/models/alpha/segment?output=json", content=img, headers=PNG)
        b = await c.post("/v1/models/beta/segment?output=label", content=img, headers=PNG)
        unnamed = await c.post("/v1/segment", content=img, headers=PNG)
        text = (await c.get("/metrics")).text
        app = c._transport.app  # type: ignore[attr-defined]
        batchers = {name: rt.batcher for name, rt in app.state.service.models.items()}
    assert [m["name"] for m in listing["models"]] == ["alpha", "beta"]
    assert all(m["ready"] and not m["default"] for m in listing["models"])
    assert listing["default"] is None
    (bad,) = listing["unavailable"]
    assert bad["file"] == "broken.onnx" and "readable" in bad["reason"]
    assert beta.status_code == 200 and len(beta.json()["classes"]) == 3
    assert missing.status_code == 404 and "alpha" in missing.json()["detail"]
    assert a.status_code == 200 and a.json()["model"] == "alpha"
    assert np.asarray(Image.open(io.BytesIO(b.content))).max() < 3  # beta's 3 classes
    # two models and no default: the unnamed route says which names there are
    assert unnamed.status_code == 400 and "alpha" in unnamed.json()["detail"]
    assert batchers["alpha"] is not batchers["beta"]
    assert 'pspnet_tiles_total{model="alpha"} 1.0' in text and 'pspnet_tiles_total{model="beta"} 1.0' in text
    assert 'route="/v1/models/{name}/segment"' in text


@pytest.mark.anyio
async def test_the_default_model_serves_v1_segment(repo: Path) -> None:
    img = png_bytes(40, 60, seed=2)
    async with serving(repo, default_model="beta") as c:
        unnamed = await c.post("/v1/segment?output=label", content=img, headers=PNG)
        named = await c.post("/v1/models/beta/segment?output=label", content=img, headers=PNG)
        listing = (await c.get("/v1/models")).json()
        ready = (await c.get("/readyz")).json()
    assert unnamed.status_code == 200 and unnamed.content == named.content
    assert listing["default"] == "beta"
    assert ready["model"] == "beta" and {m["name"] for m in ready["models"]} == {"alpha", "beta"}


@pytest.mark.anyio
async def test_an_unknown_default_or_a_duplicate_name_stops_the_start(repo: Path) -> None:
    with pytest.raises(RepositoryError, match="gamma"):
        async with serving(repo, default_model="gamma"):
            pass
    build_tiny_artifact(repo / "c.onnx", name="alpha")
    with pytest.raises(RepositoryError, match=r"a\.onnx and c\.onnx"):
        async with serving(repo):
            pass


def test_the_cli_refuses_a_duplicate_before_binding_a_port(repo: Path,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    build_tiny_artifact(repo / "c.onnx", name="alpha")
    code = cli_main(["--model", str(repo), "--port", "1"])
    assert code == 2
    assert "a.onnx and c.onnx" in capfd.readouterr().err
