"""Prometheus metrics, all ``pspnet_*``, in a registry built per app (never at import)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
STAGES = ("decode", "plan", "queue", "inference", "stitch", "encode")


class Metrics:
    """Every metric the service exports; also the batcher's observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pspnet_requests_total", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("pspnet_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("pspnet_requests_in_flight", "HTTP requests being served", registry=r)
        self.queue_tiles = Gauge("pspnet_queue_tiles", "tiles waiting in the batch queue", registry=r)
        self.batch_size = Histogram("pspnet_batch_size_tiles", "tiles per inference batch",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inference = Histogram("pspnet_inference_duration_seconds", "ONNX Runtime time per batch",
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.tiles = Counter("pspnet_tiles_total", "tiles run through the model", registry=r)
        self.stage = Histogram("pspnet_stage_duration_seconds", "time per request in each pipeline stage",
                               ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.rejections = Counter("pspnet_rejections_total",
                                  "requests or tiles refused or dropped, by reason", ["reason"], registry=r)
        self.dropped_tiles = Counter("pspnet_dropped_tiles_total",
                                     "queued tiles dropped before running, by reason", ["reason"], registry=r)
        self.ready = Gauge("pspnet_ready", "1 when the model is loaded and warmed up", registry=r)
        self.model_info = Gauge("pspnet_model_info", "the served model (value 1)",
                                ["name", "dataset", "provider", "tile", "classes"], registry=r)
        for s in STAGES:
            self.stage.labels(stage=s)

    # batcher observer protocol
    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)
        self.tiles.inc(size)

    def on_drop(self, reason: str, tiles: int) -> None:
        self.dropped_tiles.labels(reason=reason).inc(tiles)

    def on_reject(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()

    def on_queue(self, depth: int) -> None:
        self.queue_tiles.set(depth)
