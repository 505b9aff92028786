"""docker/healthcheck.py, the images' HEALTHCHECK, against a stand-in server on loopback."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from .helpers import ROOT

SCRIPT = ROOT / "docker" / "healthcheck.py"


def run_check(port: int, host: str = "0.0.0.0") -> int:
    env = {**os.environ, "PSPNET_PORT": str(port), "PSPNET_HOST": host}
    return subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, timeout=30).returncode


@pytest.fixture
def server() -> Iterator[tuple[int, dict[str, int]]]:
    answer = {"/healthz": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answer.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], answer
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_healthy_when_healthz_answers_200(server: tuple[int, dict[str, int]]) -> None:
    port, _ = server
    assert run_check(port) == 0
    assert run_check(port, host="127.0.0.1") == 0


def test_unhealthy_on_an_error_status(server: tuple[int, dict[str, int]]) -> None:
    port, answer = server
    answer["/healthz"] = 500
    assert run_check(port) == 1


def test_unhealthy_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connection refused
        assert run_check(port) == 1
