"""Triton's and KServe's own HTTP clients, unchanged, against a running server with a directory of
two models: health, metadata, config, statistics, and inference with encoded images (BYTES) and
pixel tensors (UINT8), binary data on and off; labels equal to /v1's for the same image."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from PIL import Image

from benchmarks.load.localserver import free_port, stop, wait_ready
from tests.service.api_client import png_bytes
from tests.service.tiny_model import build_tiny_artifact

IMAGE = png_bytes(40, 60, seed=11)
RGB = np.asarray(Image.open(io.BytesIO(IMAGE)).convert("RGB"))


TOKEN = "oip-client-token"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    build_tiny_artifact(repo / "a.onnx", name="alpha", num_classes=5)
    build_tiny_artifact(repo / "b.onnx", name="beta", num_classes=3)
    return repo


@contextmanager
def _serving(repo: Path, **settings: str) -> Iterator[str]:
    """``python -m service.cli`` on ``repo``; ``settings``: more PSPNET_* variables."""
    port = free_port()
    env = {**os.environ, "PSPNET_MODEL": str(repo), "PSPNET_HOST": "127.0.0.1", "PSPNET_PORT": str(port),
           "PSPNET_INTRA_OP_THREADS": "1", "PSPNET_WARMUP": "false", **settings}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc, seconds=30)


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[str]:
    with _serving(repo) as url:
        yield url


def v1_labels(server: str, model: str) -> np.ndarray:
    req = urllib.request.Request(f"http://{server}/v1/models/{model}/segment?output=label", data=IMAGE,
                                 headers={"content-type": "image/png"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return np.asarray(Image.open(io.BytesIO(r.read())))


def test_tritonclient_health_metadata_config_and_statistics(server: str) -> None:
    client = triton.InferenceServerClient(url=server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("alpha") and client.is_model_ready("beta", model_version="1")
    assert not client.is_model_ready("gamma")
    meta = client.get_model_metadata("beta")
    assert meta["name"] == "beta" and meta["versions"] == ["1"]
    assert {i["name"] for i in meta["inputs"]} == {"image", "pixels"}
    config = client.get_model_config("alpha")
    assert config["name"] == "alpha" and config["input"][0]["data_type"] == "TYPE_STRING"
    stats = client.get_inference_statistics("alpha")["model_stats"]
    assert [s["name"] for s in stats] == ["alpha"]
    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} == {"alpha", "beta"}
    assert client.get_server_metadata()["name"] == "pspnet-serving"
    with pytest.raises(triton.InferenceServerException, match="no model named"):
        client.get_model_metadata("gamma")


def test_tritonclient_lists_the_repository_index(server: str) -> None:
    """The served names, as a client discovers them: metadata names, not file names (a.onnx, b.onnx)."""
    client = triton.InferenceServerClient(url=server)
    index = client.get_model_repository_index()
    assert index == [{"name": "alpha", "version": "1", "state": "READY"},
                     {"name": "beta", "version": "1", "state": "READY"}]
    for entry in index:  # every name listed is one the other calls take
        assert client.is_model_ready(entry["name"], model_version=entry["version"])


def test_tritonclient_repository_index_needs_the_token(repo: Path) -> None:
    with _serving(repo, PSPNET_AUTH_TOKEN=TOKEN) as url:
        client = triton.InferenceServerClient(url=url)
        with pytest.raises(triton.InferenceServerException, match="Authorization: Bearer") as refused:
            client.get_model_repository_index()
        with pytest.raises(triton.InferenceServerException, match="Authorization: Bearer"):
            client.get_model_repository_index(headers={"Authorization": "Bearer wrong-token"})
        names = [e["name"] for e in client.get_model_repository_index(
            headers={"Authorization": f"Bearer {TOKEN}"})]
        assert client.is_server_ready()  # the server's own health stays open
    assert refused.value.status() == "401"
    assert names == ["alpha", "beta"]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer_bytes_and_pixels(server: str, binary: bool) -> None:
    client = triton.InferenceServerClient(url=server)
    expected = v1_labels(server, "alpha")
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([IMAGE], dtype=np.object_), binary_data=True)  # files are binary
    out = triton.InferRequestedOutput("labels", binary_data=binary)
    result = client.infer("alpha", [image], outputs=[out], parameters={"mode": "slide"})
    np.testing.assert_array_equal(result.as_numpy("labels"), expected[None])

    pixels = triton.InferInput("pixels", [1, *RGB.shape], "UINT8")
    pixels.set_data_from_numpy(RGB[None], binary_data=binary)
    result = client.infer("alpha", [pixels], outputs=[out])
    np.testing.assert_array_equal(result.as_numpy("labels"), expected[None])
    stats = client.get_inference_statistics("alpha")["model_stats"][0]
    assert stats["inference_count"] >= 2 and stats["execution_count"] >= 1


def test_tritonclient_errors_carry_the_servers_message(server: str) -> None:
    client = triton.InferenceServerClient(url=server)
    pixels = triton.InferInput("pixels", [1, *RGB.shape], "UINT8")
    pixels.set_data_from_numpy(RGB[None])
    with pytest.raises(triton.InferenceServerException, match="unknown request parameters"):
        client.infer("alpha", [pixels], parameters={"modee": "whole"})


@pytest.mark.parametrize("binary", [True, False])
def test_kserve_client_health_and_infer(server: str, binary: bool) -> None:
    expected = v1_labels(server, "beta")
    base = f"http://{server}"

    async def run() -> tuple[bool, bool, bool, np.ndarray, np.ndarray]:
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=1))
        try:
            live = await client.is_server_live(base)
            ready = await client.is_server_ready(base)
            model_ready = await client.is_model_ready(base, "beta")
            pixels = InferInput("pixels", list(RGB.shape), "UINT8")
            pixels.set_data_from_numpy(RGB, binary_data=binary)
            by_pixels = await client.infer(base, InferRequest("beta", [pixels]), model_name="beta")
            image = InferInput("image", [1], "BYTES")
            image.set_data_from_numpy(np.array([IMAGE], dtype=np.object_), binary_data=True)
            by_image = await client.infer(base, InferRequest("beta", [image]), model_name="beta")
            return (live, ready, model_ready, by_pixels.outputs[0].as_numpy(), by_image.outputs[0].as_numpy())
        finally:
            await client.close()

    live, ready, model_ready, from_pixels, from_image = asyncio.run(run())
    assert live and ready and model_ready
    np.testing.assert_array_equal(from_pixels, expected)  # unbatched [H, W, 3] in, [H, W] out
    np.testing.assert_array_equal(from_image, expected[None])
