"""The supervisor's figures in /metrics, and a dead worker's live gauges dropped."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from service.telemetry.workers import SupervisorCollector, forget_process, write_supervisor


def _text(folder: Path) -> str:
    registry = CollectorRegistry()
    registry.register(SupervisorCollector(folder))
    return generate_latest(registry).decode()


def test_restarts_and_workers_come_from_the_supervisor_file(tmp_path: Path) -> None:
    write_supervisor(tmp_path, workers=3, restarts={"signal_sigkill": 2, "exit_1": 1})
    text = _text(tmp_path)
    assert "pspnet_workers 3.0" in text
    assert 'pspnet_worker_restarts_total{reason="signal_sigkill"} 2.0' in text
    assert 'pspnet_worker_restarts_total{reason="exit_1"} 1.0' in text
    assert not list(tmp_path.glob(".*"))  # written through a temporary file, renamed


def test_no_supervisor_file_yet_reads_as_nothing(tmp_path: Path) -> None:
    text = _text(tmp_path)
    assert "pspnet_workers 0.0" in text and "pspnet_worker_restarts_total{" not in text


def test_forget_process_drops_only_its_live_gauges(tmp_path: Path) -> None:
    for name in ("gauge_livesum_41.db", "gauge_livemin_41.db", "counter_41.db", "gauge_livesum_42.db"):
        (tmp_path / name).write_bytes(b"")
    forget_process(tmp_path, 41)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_41.db", "gauge_livesum_42.db"]
