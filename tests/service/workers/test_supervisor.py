"""``pspnet-serve --workers 2``, the real processes: one server to its clients.

Both workers answer; /metrics and /v2 statistics count every request once; a reload through one
worker reaches the other; a worker killed with SIGKILL is replaced while the server answers and
stays ready; SIGTERM drains the requests in flight in every worker. Each step waits for what it
expects by polling (bounded by a number of tries, never by a measured time).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.load.localserver import free_port, wait_ready
from service.settings import DEFAULT_MODEL
from service.workers.supervisor import how_it_ended
from tests.service.api_client import png_bytes
from tests.service.tiny_model import build_tiny_artifact

TOKEN = "workers-test-token"
PNG = png_bytes(50, 70)


class Server:
    def __init__(self, model: Path, log: Path, *extra: str) -> None:
        self.model = model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "--model", str(model), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "2", "--auth-token", TOKEN, *extra],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PSPNET_LOG_LEVEL": "info"})
        wait_ready(self.url + "/readyz", self.proc, seconds=120)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30, headers={"authorization": f"Bearer {TOKEN}"})

    def segment(self, query: str = "output=label", body: bytes = PNG) -> int:
        headers = {"content-type": "image/png", "authorization": f"Bearer {TOKEN}"}
        with httpx.Client(timeout=60) as c:  # a connection of its own: the kernel picks a worker for each
            return c.post(f"{self.url}/v1/segment?{query}", content=body, headers=headers).status_code

    def workers(self) -> list[dict[str, Any]]:
        body = self.get("/readyz").json()
        return list(body["workers"])

    def metric(self, line: str) -> float | None:
        found = re.search(rf"^{re.escape(line)} (\S+)$", self.get("/metrics").text, re.MULTILINE)
        return None if found is None else float(found.group(1))

    def until(self, what: Any, tries: int = 200) -> Any:
        for _ in range(tries):
            got = what()
            if got:
                return got
            time.sleep(0.1)
        raise AssertionError(f"never came: {what}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("workers")
    s = Server(build_tiny_artifact(folder / "tiny.onnx"), folder / "server.log")
    try:
        yield s
    finally:
        s.stop()


def _many(server: Server, n: int, query: str = "output=label") -> list[int]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: server.segment(query), range(n)))


def test_both_workers_answer_and_every_request_counts_once(server: Server) -> None:
    sent = 0
    for _ in range(20):  # until the kernel has handed connections to both workers
        assert _many(server, 16) == [200] * 16
        sent += 16
        workers = server.workers()
        if all(w["requests"] > 0 for w in workers):
            break
    assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
    assert all(w["requests"] > 0 for w in workers), workers
    assert sum(w["requests"] for w in workers) == sent
    for _ in range(4):  # whichever worker answers, the statistics are the whole server's
        stats = server.get("/v2/models/tiny/stats").json()["model_stats"][0]
        assert stats["inference_count"] == sent
        assert stats["inference_stats"]["success"]["count"] == sent
    # the middleware counts after the response is sent: wait for the last increments
    line = 'pspnet_requests_total{method="POST",model="tiny",route="/v1/segment",status="200"}'
    server.until(lambda: server.metric(line) == sent, tries=50)
    assert server.metric(line) == sent
    assert server.metric("pspnet_workers") == 2


def test_a_reload_through_one_worker_reaches_both(server: Server) -> None:
    before = server.workers()
    assert before[0]["models"] == before[1]["models"] and len(before[0]["models"]) == 1
    st = server.model.stat()
    os.utime(server.model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new version of the file
    r = httpx.post(server.url + "/v1/admin/reload", headers={"authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert r.status_code == 200 and r.json()["loaded"] == ["tiny"]

    def both_new() -> bool:
        ws = server.workers()
        return all(w["models"] != before[0]["models"] and w["models"] == ws[0]["models"] for w in ws)

    server.until(both_new)
    assert server.get("/readyz").status_code == 200
    # the new version's statistics start from zero in both workers, and count every request once
    assert _many(server, 24) == [200] * 24
    assert {server.get("/v2/models/tiny/stats").json()["model_stats"][0]["inference_count"]
            for _ in range(4)} == {24}


def test_a_killed_worker_is_replaced_while_the_server_answers(server: Server) -> None:
    victim = server.workers()[0]
    os.kill(victim["pid"], signal.SIGKILL)
    server.until(lambda: server.workers()[0]["pid"] != victim["pid"])  # reaped: replacing, or replaced
    readiness = []
    while True:  # the survivor answers, and the server stays ready while the slot is refilled
        assert _many(server, 8) == [200] * 8
        readiness.append(server.get("/readyz").status_code)
        slot = server.workers()[0]
        if slot["pid"] not in (None, victim["pid"]) and slot["ready"]:
            break
        assert len(readiness) < 300, "no new worker became ready"
    assert set(readiness) == {200}
    assert server.metric('pspnet_worker_restarts_total{reason="signal_sigkill"}') == 1
    assert server.metric("pspnet_workers") == 2
    assert f"worker 0 (pid {victim['pid']}) died (signal sigkill)" in server.log.read_text()


def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    # the shipped model, multi-scale with flip (40 tiles a request, seconds each on one thread): the
    # requests are still running when SIGTERM comes
    s = Server(DEFAULT_MODEL, tmp_path / "server.log", "--intra-op-threads", "1")
    query = "output=label&mode=multiscale&flip=true"
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = [pool.submit(s.segment, query, png_bytes(360, 480)) for _ in range(4)]
            # every request is in a worker's hands (the scrape itself is one more in flight)
            s.until(lambda: (s.metric("pspnet_requests_in_flight") or 0) >= 5)
            code = s.stop()
            statuses = [a.result() for a in answers]
    finally:
        s.stop()
    log = s.log.read_text()
    assert statuses == [200] * 4
    assert code == -signal.SIGTERM  # the supervisor ends by the signal, as one uvicorn does
    assert log.count("pspnet.app: stopped") == 2 and "pspnet.supervisor: stopped" in log


def test_how_a_worker_ended_is_a_metric_label() -> None:
    assert how_it_ended(-signal.SIGKILL) == "signal_sigkill"
    assert how_it_ended(1) == "exit_1"
    assert how_it_ended(-200) == "exit_-200"


class _FakeWorker:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[int] = []

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)


def test_sighup_waits_for_a_worker_still_starting(tmp_path: Path) -> None:
    """Before a worker's app runs, SIGHUP would end it: it gets the reload once it has started."""
    from service.repository.workers import WorkerBoard, WorkerPlace, prepare
    from service.settings import Settings
    from service.workers.supervisor import Supervisor

    prepare(tmp_path, 2)
    sup = Supervisor(Settings(), [], 2, root=tmp_path)
    started, starting = _FakeWorker(101), _FakeWorker(102)
    sup.children = {0: started, 1: starting}  # type: ignore[dict-item]

    def publish(slot: int, pid: int) -> None:
        board = WorkerBoard(WorkerPlace(root=str(tmp_path), slot=slot, count=2, fd=-1, replacement=False,
                                        supervisor=os.getpid()))
        board.pid = pid
        board.publish(ready=False, models=[])

    publish(0, 101)
    sup._on_hup(signal.SIGHUP, None)
    assert started.signals == [signal.SIGHUP] and starting.signals == []
    publish(1, 102)
    sup._forward_hup()
    assert starting.signals == [signal.SIGHUP] and started.signals == [signal.SIGHUP]
    assert not sup.hup_pending
