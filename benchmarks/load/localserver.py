"""A server process on loopback, for the benchmark and reliability scripts and the process-level
tests: a free port to give it, and waiting until it answers.

Not used by the service itself.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from typing import Any

import httpx


class ServerNotReady(RuntimeError):
    """The process exited, or the URL did not answer 200 in time."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (free when asked; bind it soon)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], *, seconds: float = 60.0,
               interval: float = 0.1) -> None:
    """Poll ``url`` (e.g. ``http://127.0.0.1:8000/readyz``) until it answers 200.

    Raises :class:`ServerNotReady` with the exit status (and the output, when the process writes
    to a pipe) if ``proc`` exits first, or when ``seconds`` pass.
    """
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise ServerNotReady(f"server exited with {proc.returncode} before it was ready: {output}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(interval)
    raise ServerNotReady(f"{url} not ready after {seconds:g} s")


def stop(proc: subprocess.Popen[Any], *, seconds: float = 60.0) -> int:
    """SIGTERM (a server drains and exits), then SIGKILL after ``seconds``; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
