"""Prometheus metrics, all ``pspnet_*``, in a registry built per app (never at import).

With ``pspnet-serve --workers N`` (``shared``: the folder of ``PROMETHEUS_MULTIPROC_DIR``) every
worker writes its series to files there and any worker's ``/metrics`` renders all of them added up:
counters and histograms summed over every process that ever ran (a dead worker's requests stay
counted), gauges over the live ones (in flight and queued tiles summed, ready the lowest, model info
the highest), plus the supervisor's figures (telemetry/workers.py).

Every series about a model carries a ``model`` label (its metadata name); for a
request that names no model (health, metrics, an unknown path) it is empty.
Each model's batcher reports through its own :class:`ModelObserver`.

Tested by tests/service/api/test_app.py (the series a request moves), tests/deploy/test_dashboard.py
and tests/deploy/test_reference_tables.py (the metrics table).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from .workers import SupervisorCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
STAGES = ("decode", "plan", "queue", "inference", "stitch", "encode")


class Metrics:
    """Every metric the service exports."""

    def __init__(self, shared: Path | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.shared = shared
        self._everyone: CollectorRegistry | None = None  # what /metrics renders with several workers
        if shared is not None:
            self._everyone = CollectorRegistry()
            MultiProcessCollector(self._everyone, path=str(shared))  # type: ignore[no-untyped-call]
            self._everyone.register(SupervisorCollector(shared))
        self.requests = Counter("pspnet_requests_total",
                                "HTTP requests by route template, method, status and model",
                                ["route", "method", "status", "model"], registry=r)
        self.latency = Histogram("pspnet_request_duration_seconds", "HTTP request latency by route and model",
                                 ["route", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("pspnet_requests_in_flight", "HTTP requests being served", registry=r,
                               multiprocess_mode="livesum")
        self.queue_tiles = Gauge("pspnet_queue_tiles", "tiles waiting in a model's batch queue", ["model"],
                                 registry=r, multiprocess_mode="livesum")
        self.batch_size = Histogram("pspnet_batch_size_tiles", "tiles per inference batch", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram("pspnet_inference_duration_seconds", "ONNX Runtime time per batch",
                                   ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.tiles = Counter("pspnet_tiles_total", "tiles run through the model", ["model"], registry=r)
        self.batch_failures = Counter("pspnet_batch_failures_total", "inference batches that failed",
                                      ["model"], registry=r)
        self.stage = Histogram("pspnet_stage_duration_seconds", "time per request in each pipeline stage",
                               ["stage", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.rejections = Counter("pspnet_rejections_total",
                                  "requests or tiles refused or dropped, by reason (model empty when the "
                                  "reason is not a model's: memory, client_gone before routing)",
                                  ["reason", "model"], registry=r)
        self.dropped_tiles = Counter("pspnet_dropped_tiles_total",
                                     "queued tiles dropped before running, by reason", ["reason", "model"],
                                     registry=r)
        self.stitches = Counter("pspnet_stitches_total",
                                "requests stitched with the device stitch on, by where: device, or host when "
                                "their sums did not fit PSPNET_DEVICE_STITCH_MB then", ["model", "route"],
                                registry=r)
        self.ready = Gauge("pspnet_ready", "1 when the model is loaded, warmed up and not failing", ["model"],
                           registry=r, multiprocess_mode="livemin")
        self.model_info = Gauge("pspnet_model_info", "a served model (value 1)",
                                ["model", "dataset", "provider", "tile", "classes"], registry=r,
                                multiprocess_mode="livemax")
        self._info: dict[str, tuple[str, ...]] = {}  # model -> its model_info labels

    def set_model_info(self, model: str, *, dataset: str, provider: str, tile: str, classes: str) -> None:
        self._info[model] = (model, dataset, provider, tile, classes)
        self.model_info.labels(*self._info[model]).set(1)

    def render(self) -> bytes:
        """The Prometheus text of ``/metrics``: this registry, or with several workers every one's."""
        return generate_latest(self.registry if self._everyone is None else self._everyone)

    def on_reject(self, reason: str, model: str = "") -> None:
        self.rejections.labels(reason=reason, model=model).inc()

    def for_model(self, name: str, *, on_batch: Callable[[int, float], None] = lambda n, s: None,
                  on_failure: Callable[[int, BaseException], None] = lambda n, e: None) -> ModelObserver:
        """The batcher observer of model ``name``; its series exist from now on (zero until used)."""
        for s in STAGES:
            self.stage.labels(stage=s, model=name)
        self.batch_size.labels(model=name)
        self.inference.labels(model=name)
        self.tiles.labels(model=name)
        self.batch_failures.labels(model=name)
        self.queue_tiles.labels(model=name)
        return ModelObserver(self, name, on_batch, on_failure)

    def forget_model(self, name: str) -> None:
        """Drop the gauges of a model no longer served (counters and histograms keep their totals).
        Several workers' files cannot drop a series: its gauges read 0 there instead."""
        if self.shared is not None:
            self.queue_tiles.labels(model=name).set(0)
            self.ready.labels(model=name).set(0)
            info = self._info.pop(name, None)
            if info is not None:
                self.model_info.labels(*info).set(0)
            return
        for gauge in (self.queue_tiles, self.ready):
            with contextlib.suppress(KeyError):  # never set for this model
                gauge.remove(name)
        info = self._info.pop(name, None)
        if info is not None:
            self.model_info.remove(*info)


class ModelObserver:
    """One model's batcher hooks (service.engine.batcher.BatchObserver), plus callbacks for its health and
    its Open Inference Protocol statistics."""

    def __init__(self, metrics: Metrics, name: str, on_batch: Callable[[int, float], None],
                 on_failure: Callable[[int, BaseException], None]) -> None:
        self.metrics = metrics
        self.name = name
        self._on_batch = on_batch
        self._on_failure = on_failure

    def on_batch(self, size: int, seconds: float) -> None:
        m = self.metrics
        m.batch_size.labels(model=self.name).observe(size)
        m.inference.labels(model=self.name).observe(seconds)
        m.tiles.labels(model=self.name).inc(size)
        self._on_batch(size, seconds)

    def on_batch_failed(self, size: int, error: BaseException) -> None:
        self.metrics.batch_failures.labels(model=self.name).inc()
        self._on_failure(size, error)

    def on_drop(self, reason: str, tiles: int) -> None:
        self.metrics.dropped_tiles.labels(reason=reason, model=self.name).inc(tiles)

    def on_reject(self, reason: str) -> None:
        self.metrics.on_reject(reason, self.name)

    def on_queue(self, depth: int) -> None:
        self.metrics.queue_tiles.labels(model=self.name).set(depth)
