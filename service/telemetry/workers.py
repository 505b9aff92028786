"""The metrics of a ``--workers N`` server that no worker counts: restarts and live workers.

The supervisor writes them to ``supervisor.json`` in the folder of the workers' Prometheus files
(``PROMETHEUS_MULTIPROC_DIR``); every worker's ``/metrics`` reads it back through
:class:`SupervisorCollector`, beside the counters and histograms of every worker added up.

Tested by tests/service/telemetry/test_workers.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.registry import Collector

SUPERVISOR_FILE = "supervisor.json"


def write_supervisor(folder: Path, *, workers: int, restarts: dict[str, int]) -> None:
    """The supervisor's figures, replaced at once (a reader sees the old file or the new one)."""
    tmp = folder / f".{SUPERVISOR_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps({"workers": workers, "restarts": restarts}))
    tmp.replace(folder / SUPERVISOR_FILE)


def forget_process(folder: Path, pid: int) -> None:
    """A dead worker's live gauges leave the sums (its counters and histograms stay counted)."""
    mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]


class SupervisorCollector(Collector):
    """``pspnet_workers`` and ``pspnet_worker_restarts_total`` from ``folder``'s supervisor file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        try:
            figures = json.loads((self.folder / SUPERVISOR_FILE).read_text())
        except (OSError, ValueError):
            figures = {"workers": 0, "restarts": {}}
        yield GaugeMetricFamily("pspnet_workers", "server worker processes running now",
                                value=figures["workers"])
        restarts = CounterMetricFamily("pspnet_worker_restarts", "worker processes that died and "
                                       "were replaced, by how they ended", labels=["reason"])
        for reason, n in sorted(figures["restarts"].items()):
            restarts.add_metric([reason], n)
        yield restarts
