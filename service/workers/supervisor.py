"""The supervisor of ``pspnet-serve --workers N``: one listening socket, N full server processes.

Design (docs/DESIGN.md, "Processes"): the supervisor binds the port, makes the shared folder
(service/repository/workers.py) and starts N workers, each ``pspnet-serve`` again with the same
flags and its place in the environment: a whole server (HTTP, decode, plan, its own ONNX Runtime
sessions and batcher, stitch, encode) that accepts on the inherited socket. The kernel hands each
connection to one of them. The supervisor serves no request and imports no ONNX Runtime session;
it only

- forwards SIGHUP to every worker (``POST /v1/admin/reload`` in one worker asks it to); a worker
  still starting gets it once it has started (before, SIGHUP would end it, and after, it might
  serve files older than the others');
- on SIGTERM or SIGINT, closes its copy of the socket and sends SIGTERM to every worker, which
  drains what it accepted; waits for them (``request_timeout_s`` + 15 s, then SIGKILL), then ends
  by the same signal, as a single uvicorn does (exit 143 for SIGTERM);
- replaces a worker that dies: logged, counted in ``pspnet_worker_restarts_total``, its memory
  reservations and live gauges dropped, its slot marked ``replacing`` (so readiness waits only for
  the live workers), and a new worker started in its slot at once (after 0.5 s, doubling up to
  10 s, while it keeps dying within 10 s of its start);
- stops the server when a worker fails before any worker has started (a bad model, a bad setting:
  the same error as one process would give, with its exit status).

Tested by tests/service/workers/test_supervisor.py (a real two-worker server).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import FrameType

from service.engine.held import SharedHeld
from service.repository.workers import ENV, WorkerPlace, mark_replacing, prepare, status_of
from service.settings import Settings
from service.telemetry.workers import forget_process, write_supervisor

log = logging.getLogger("pspnet.supervisor")

QUICK_DEATH_S = 10.0  # a worker that dies sooner than this after its start waits longer each time
MAX_DELAY_S = 10.0
TICK_S = 0.1


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket every worker inherits (uvicorn's own defaults: SO_REUSEADDR, 2048)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def how_it_ended(code: int) -> str:
    """A worker's end as a metric label: ``signal_sigkill``, ``exit_1``."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal_{signal.Signals(-code).name.lower()}"
    return f"exit_{code}"


class Supervisor:
    def __init__(self, settings: Settings, argv: list[str], count: int, *, root: Path | None = None) -> None:
        self.settings = settings
        self.argv = argv  # the serve flags, passed on to every worker as they are
        self.count = count
        self.root = root or Path(tempfile.mkdtemp(prefix="pspnet-workers-"))
        self.metrics_dir = self.root / "metrics"
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.started_at: dict[int, float] = {}
        self.quick: Counter[int] = Counter()  # deaths within QUICK_DEATH_S in a row, per slot
        self.due: dict[int, float] = {}  # slot -> when its replacement starts
        self.restarts: Counter[str] = Counter()
        self.stopping: int | None = None
        self.hup_pending: set[int] = set()  # slots whose worker gets SIGHUP once it has started
        self.any_started = False
        self.sock: socket.socket | None = None

    # -- signals ---------------------------------------------------------------------------------

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.hup_pending.update(self.children)
        self._forward_hup()

    def _started(self, slot: int) -> bool:
        """The worker of ``slot`` has published its state: its app runs, its SIGHUP handler is in place."""
        status = status_of(self.root, slot)
        proc = self.children.get(slot)
        return proc is not None and status is not None and status.get("pid") == proc.pid

    def _forward_hup(self) -> None:
        for slot in sorted(self.hup_pending):
            if self._started(slot):
                self.hup_pending.discard(slot)
                with contextlib.suppress(ProcessLookupError):
                    self.children[slot].send_signal(signal.SIGHUP)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping is None:
            self.stopping = signum

    def _send_all(self, sig: int) -> None:
        for proc in list(self.children.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    # -- workers ---------------------------------------------------------------------------------

    def spawn(self, slot: int, *, replacement: bool) -> None:
        assert self.sock is not None
        place = WorkerPlace(root=str(self.root), slot=slot, count=self.count, fd=self.sock.fileno(),
                            replacement=replacement, supervisor=os.getpid())
        env = {**os.environ, ENV: place.env(), "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", *self.argv], env=env,
                                pass_fds=(self.sock.fileno(),))
        self.children[slot] = proc
        self.started_at[slot] = time.monotonic()
        self.hup_pending.discard(slot)  # a new worker reads the files as they are now
        log.info("worker %d started (pid %d)%s", slot, proc.pid,
                 ", replacing one that died" if replacement else "")

    def _publish(self) -> None:
        write_supervisor(self.metrics_dir, workers=len(self.children), restarts=dict(self.restarts))

    def _replace(self, slot: int, proc: subprocess.Popen[bytes], code: int) -> None:
        ended = how_it_ended(code)
        del self.children[slot]
        self.restarts[ended] += 1
        forget_process(self.metrics_dir, proc.pid)
        SharedHeld(self.root / "memory.bin").clear(slot)
        SharedHeld(self.root / "device.bin").clear(slot)
        mark_replacing(self.root, slot)
        lived = time.monotonic() - self.started_at[slot]
        self.quick[slot] = self.quick[slot] + 1 if lived < QUICK_DEATH_S else 0
        delay = 0.0 if not self.quick[slot] else min(MAX_DELAY_S, 0.5 * 2 ** (self.quick[slot] - 1))
        self.due[slot] = time.monotonic() + delay
        log.error("worker %d (pid %d) died (%s) after %.1f s: replacing it in %.1f s", slot, proc.pid,
                  ended.replace("_", " "), lived, delay)
        self._publish()

    def _watch(self) -> int | None:
        """One look at the workers: replace the dead, start those due; an exit status to stop with."""
        if not self.any_started:
            self.any_started = any(self._started(slot) for slot in self.children)
        if self.hup_pending:
            self._forward_hup()
        for slot, proc in list(self.children.items()):
            code = proc.poll()
            if code is None:
                continue
            if not self.any_started:
                log.error("worker %d (pid %d) failed before the server started (%s): stopping", slot,
                          proc.pid, how_it_ended(code).replace("_", " "))
                return code if code > 0 else 3
            self._replace(slot, proc, code)
        now = time.monotonic()
        for slot, when in list(self.due.items()):
            if when <= now:
                del self.due[slot]
                self.spawn(slot, replacement=True)
                self._publish()
        return None

    def _stop_workers(self) -> None:
        if self.sock is not None:
            self.sock.close()  # the port closes once the workers close theirs: nothing new queues
        self._send_all(signal.SIGTERM)
        end = time.monotonic() + self.settings.request_timeout_s + 15
        for slot, proc in list(self.children.items()):
            try:
                proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not stop in time: killing it", slot, proc.pid)
                proc.kill()
                proc.wait()
        self.children.clear()

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT (then end by that signal), or until the start fails."""
        prepare(self.root, self.count)
        self.sock = bind(self.settings.host, self.settings.port)
        previous = {s: signal.signal(s, h) for s, h in ((signal.SIGHUP, self._on_hup),
                                                         (signal.SIGTERM, self._on_stop),
                                                         (signal.SIGINT, self._on_stop))}
        status = 0
        try:
            log.info("supervisor (pid %d): %d workers on %s:%d", os.getpid(), self.count,
                     self.settings.host, self.settings.port)
            for slot in range(self.count):
                self.spawn(slot, replacement=False)
            self._publish()
            while self.stopping is None:
                failed = self._watch()
                if failed is not None:
                    status = failed
                    break
                time.sleep(TICK_S)
            log.info("stopping %d workers", len(self.children))
            self._stop_workers()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            if self.children:  # an error in the supervisor itself: leave no worker behind
                self._stop_workers()
            shutil.rmtree(self.root, ignore_errors=True)
        log.info("stopped")
        if self.stopping is not None:  # end as a single uvicorn does: by the signal that stopped it
            signal.signal(self.stopping, signal.SIG_DFL)
            os.kill(os.getpid(), self.stopping)
        return status


def supervise(settings: Settings, argv: list[str], count: int) -> int:
    return Supervisor(settings, argv, count).run()
