"""PSPNET_LOG_FORMAT: json lines a log pipeline can read (uvicorn's too), one access line per request;
text lines as before."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.cli import main
from service.settings import Settings
from service.telemetry.logs import (
    BASE_KEYS,
    FIELDS,
    JsonFormatter,
    TextFormatter,
    logging_config,
    uvicorn_log_config,
)
from tests.service.api_client import png_bytes
from tests.service.tiny_model import build_tiny_artifact

STAGES = {"decode", "plan", "batch", "stitch", "encode"}
ACCESS_FIELDS = {"request_id", "method", "route", "status", "duration_ms", "stages_ms", "tiles", "model"}


def _record(msg: str, *args: object, fields: dict[str, Any] | None = None,
            exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("pspnet.test", logging.WARNING, __file__, 1, msg, args, exc_info)
    if fields is not None:
        setattr(record, FIELDS, fields)
    return record


# --- formatters ------------------------------------------------------------------------------------

def test_json_line_has_the_base_keys_and_the_fields_on_one_line() -> None:
    line = JsonFormatter().format(_record("two\nlines %d", 7, fields={"request_id": "r1", "tiles": 3,
                                                                      "where": Path("x")}, exc=True))
    assert "\n" not in line
    doc = json.loads(line)
    assert list(doc)[:4] == list(BASE_KEYS)
    assert doc["level"] == "WARNING" and doc["logger"] == "pspnet.test" and doc["msg"] == "two\nlines 7"
    ts = datetime.fromisoformat(doc["ts"])  # ISO 8601, in UTC
    assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs(ts.timestamp() - time.time()) < 60
    assert doc["request_id"] == "r1" and doc["tiles"] == 3 and doc["where"] == "x"
    assert "ValueError: boom" in doc["exc"]


def test_fields_never_overwrite_the_base_keys() -> None:
    doc = json.loads(JsonFormatter().format(_record("hello", fields={"msg": "forged", "level": "DEBUG"})))
    assert doc["msg"] == "hello" and doc["level"] == "WARNING"


def test_text_line_is_the_classic_one_plus_the_fields() -> None:
    plain = TextFormatter().format(_record("hello %s", "you"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING pspnet\.test: hello you", plain)
    with_fields = TextFormatter().format(_record("GET /healthz 200", fields={"status": 200}))
    assert with_fields.endswith(' WARNING pspnet.test: GET /healthz 200 {"status":200}')


def test_json_mode_routes_uvicorn_through_our_handler_text_mode_leaves_it_alone() -> None:
    json_config = logging_config("json", "info")
    assert json_config["root"] == {"level": "INFO", "handlers": ["stderr"]}
    assert json_config["formatters"]["main"]["()"] is JsonFormatter
    for name in ("uvicorn", "uvicorn.error"):
        assert json_config["loggers"][name] == {"handlers": [], "propagate": True}
    assert uvicorn_log_config("json") is None
    text_config = logging_config("text", "warning")
    assert "loggers" not in text_config and text_config["formatters"]["main"]["()"] is TextFormatter
    config = uvicorn_log_config("text")
    assert config is not None and "uvicorn" in config["loggers"]  # uvicorn's own default, unchanged


# --- the setting -----------------------------------------------------------------------------------

def test_log_format_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    assert Settings(model=model).log_format == "text"
    monkeypatch.setenv("PSPNET_LOG_FORMAT", "json")
    assert Settings(model=model).log_format == "json"
    monkeypatch.setenv("PSPNET_LOG_FORMAT", "xml")
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(model)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "PSPNET_LOG_FORMAT / --log-format" in err and "Traceback" not in err


# --- the real server -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server(model: Path, log_format: str) -> Iterator[tuple[str, list[str]]]:
    """``pspnet-serve`` in a subprocess; yields its URL and, once stopped by SIGTERM, its output lines."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PSPNET_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "--model", str(model), "--host", "127.0.0.1", "--port",
         str(port), "--log-format", log_format, "--warmup", "false"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    try:
        end = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < end, "server not ready in 60 s"
            with contextlib.suppress(httpx.TransportError):
                probe = httpx.get(url + "/readyz", headers={"x-request-id": "probe"}, timeout=2)
                if probe.status_code == 200:
                    break
            time.sleep(0.1)
        yield url, lines
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        lines.extend(out.decode().splitlines())


def _requests(url: str) -> None:
    """One request of each kind, each with its own id: segmented, health, unmatched, undecodable."""
    r = httpx.post(url + "/v1/segment?output=label", content=png_bytes(40, 60),
                   headers={"content-type": "image/png", "x-request-id": "seg-1"}, timeout=30)
    assert r.status_code == 200
    assert httpx.get(url + "/healthz", headers={"x-request-id": "health-1"}).status_code == 200
    assert httpx.get(url + "/no/such/page", headers={"x-request-id": "lost-1"}).status_code == 404
    broken = png_bytes(40, 60)[:60]  # a real PNG header, cut off in the image data
    r = httpx.post(url + "/v1/segment", content=broken,
                   headers={"content-type": "image/png", "x-request-id": "bad-1"}, timeout=30)
    assert r.status_code == 422


def test_json_mode_every_line_is_json_with_one_access_line_per_request(tmp_path: Path) -> None:
    model = build_tiny_artifact(tmp_path / "tiny.onnx")
    with _server(model, "json") as (url, lines):
        _requests(url)
    docs = []
    for line in lines:
        doc = json.loads(line)  # every line, uvicorn's included
        assert isinstance(doc, dict) and set(BASE_KEYS) <= set(doc), line
        datetime.fromisoformat(doc["ts"])
        docs.append(doc)
    uvicorn_msgs = [d["msg"] for d in docs if d["logger"].startswith("uvicorn")]
    assert any(m.startswith("Started server process") for m in uvicorn_msgs)
    assert any(m.startswith("Uvicorn running on") for m in uvicorn_msgs)
    assert any(m.startswith("Finished server process") for m in uvicorn_msgs)
    assert not [d for d in docs if d["logger"] == "uvicorn.access"]  # ours replaces it
    assert any(d["logger"] == "pspnet.app" and d["msg"] == "stopped" for d in docs)

    access = [d for d in docs if d["logger"] == "pspnet.access"]
    assert all(set(d) >= ACCESS_FIELDS for d in access)
    by_id = {rid: [d for d in access if d["request_id"] == rid] for rid in ("seg-1", "health-1", "lost-1",
                                                                            "bad-1")}
    assert all(len(found) == 1 for found in by_id.values()), by_id  # one line per request, not two
    (seg,), (health,), (lost,), (bad,) = by_id.values()
    assert (seg["method"], seg["route"], seg["status"], seg["model"]) == ("POST", "/v1/segment", 200, "tiny")
    assert set(seg["stages_ms"]) == STAGES and all(v >= 0 for v in seg["stages_ms"].values())
    assert seg["tiles"] >= 1 and seg["duration_ms"] >= sum(seg["stages_ms"].values()) * 0.9
    assert seg["msg"].startswith("POST /v1/segment 200 ")
    assert (health["route"], health["status"], health["tiles"]) == ("/healthz", 200, 0)
    assert health["stages_ms"] == {}
    assert (lost["route"], lost["status"], lost["path"]) == ("unmatched", 404, "/no/such/page")
    # a request that failed while decoding still shows the stage it got to
    assert bad["status"] == 422 and set(bad["stages_ms"]) == {"decode"}


def test_text_mode_is_unchanged(tmp_path: Path) -> None:
    model = build_tiny_artifact(tmp_path / "tiny.onnx")
    with _server(model, "text") as (url, lines):
        _requests(url)
    for line in lines:
        with contextlib.suppress(ValueError):
            assert not isinstance(json.loads(line), dict), line  # no line is a JSON object
    # uvicorn's own format, and ours
    assert any(re.match(r"INFO: +Uvicorn running on http://127\.0\.0\.1:", line) for line in lines)
    assert any(re.fullmatch(r"\d{4}-\d\d-\d\d [\d:,]+ INFO pspnet\.app: stopped", line) for line in lines)
    access = [line for line in lines if " INFO pspnet.access: " in line]
    (seg,) = [line for line in access if '"request_id":"seg-1"' in line]
    assert re.search(r" INFO pspnet\.access: POST /v1/segment 200 [\d.]+ ms \{", seg)
    fields = json.loads(seg[seg.index("{"):])
    assert fields["status"] == 200 and set(fields["stages_ms"]) == STAGES
    assert sum('"request_id":"health-1"' in line for line in access) == 1
