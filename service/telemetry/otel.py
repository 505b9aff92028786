"""Request spans with the OpenTelemetry SDK (the ``otel`` extra); imported only by
service/telemetry/tracing.py.

Stage spans are made after the request, from the start and end the chain
recorded for each stage (``Timings.intervals``): the chain stays free of
tracing, and a stage that runs in a worker thread needs no context handed to it.
Their clock is ``perf_counter``, mapped onto the wall clock the request span
started at, so children always nest inside their parent.

Tested by tests/service/telemetry/test_tracing.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME as SERVICE_NAME_KEY
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

from service.telemetry.spans import SERVICE_NAME, Attribute, Interval, RequestSpan, Tracing


def exporter(name: str) -> SpanExporter:
    """The exporter called ``name`` in OTEL_TRACES_EXPORTER; each reads its own OTEL_* settings."""
    if name == "otlp":
        return OTLPSpanExporter()
    # one span per line (the SDK's default is indented JSON over many lines)
    return ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + os.linesep)


def _resource() -> Resource:
    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win; our name replaces only the SDK's placeholder
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME_KEY, "unknown_service")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME_KEY: SERVICE_NAME}))
    return resource


class OtelRequestSpan(RequestSpan):
    def __init__(self, tracer: trace.Tracer, span: trace.Span, wall_ns: int, perf: float,
                 method: str) -> None:
        self._tracer = tracer
        self._span = span
        self._method = method
        # the wall clock the span started at, and the perf_counter reading of the same instant
        self._wall_ns = wall_ns
        self._perf = perf
        context = span.get_span_context()
        self.trace_id = trace.format_trace_id(context.trace_id) if context.is_valid else None

    def _ns(self, perf: float) -> int:
        return self._wall_ns + round((perf - self._perf) * 1e9)

    def end(self, *, status: int, stages: Sequence[Interval], attributes: Mapping[str, Attribute],
            route: str | None = None) -> None:
        span = self._span
        if span.is_recording():
            if route is not None:  # "{method} {route}" per the HTTP semantic conventions
                span.update_name(f"{self._method} {route}")
                span.set_attribute("http.route", route)
            parent = trace.set_span_in_context(span)
            for name, t0, t1 in stages:
                child = self._tracer.start_span(name, context=parent, start_time=self._ns(t0))
                child.end(end_time=self._ns(t1))
            span.set_attribute("http.response.status_code", status)
            span.set_attributes(dict(attributes))
            if status >= 500:  # server errors only: a 4xx is the client's (HTTP semantic conventions)
                span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=self._ns(time.perf_counter()))


class OtelTracing(Tracing):
    """A tracer provider of our own (the global one is left to whoever embeds us)."""

    enabled = True

    def __init__(self, exporters: Sequence[SpanExporter], *, batch: bool = True) -> None:
        self.exporters = list(exporters)
        self.provider = TracerProvider(resource=_resource())
        for exp in self.exporters:
            # batching keeps export off the request path; Simple is for tests that read spans at once
            self.provider.add_span_processor(BatchSpanProcessor(exp) if batch else SimpleSpanProcessor(exp))
        self.tracer = self.provider.get_tracer("pspnet.serving")

    def start(self, *, method: str, route: str | None, path: str, headers: Sequence[tuple[bytes, bytes]],
              request_id: str) -> RequestSpan:
        carrier: dict[str, str] = {}
        for key, value in headers:
            carrier.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        # a client's traceparent (or whatever OTEL_PROPAGATORS names) makes this span its child
        parent = propagate.extract(carrier)
        attributes: dict[str, Attribute] = {"http.request.method": method, "url.path": path,
                                            "pspnet.request_id": request_id}
        if route is not None:
            attributes["http.route"] = route
        # "{method} {route}" per the HTTP semantic conventions; the method alone for unmatched paths
        name = f"{method} {route}" if route is not None else method
        wall_ns, perf = time.time_ns(), time.perf_counter()
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes,
                                      start_time=wall_ns)
        return OtelRequestSpan(self.tracer, span, wall_ns, perf, method)

    def shutdown(self) -> None:
        self.provider.shutdown()

