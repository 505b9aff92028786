"""Pure ASGI middleware: request id, in-flight gauge, per-route metrics, one log line and one trace
span per request.

Metric labels are route templates (``/v1/models/{name}/segment``), read from the
app's own routes, never raw paths, so a scan of random URLs cannot blow up the
series count; the ``model`` label is the model the handler served. Gauges are decremented in
``finally`` blocks so an exception never leaks a count.

The app leaves two things in ``scope["state"]`` for the access line and the span:
``timings`` (the chain's :class:`~service.pipeline.timings.Timings`, filled as stages finish,
so a request that timed out still shows how far it got) and ``log_extra``
(fields of a finished segmentation: tiles, mode, size ...).

Tested by tests/service/api/test_app.py (request id, per-route metrics),
tests/service/telemetry/test_logs.py (the access line) and tests/service/telemetry/test_tracing.py
(the request span).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.pipeline.timings import Timings
from service.telemetry.logs import log_request
from service.telemetry.metrics import Metrics
from service.telemetry.spans import NO_TRACING, Tracing

_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _VALID_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str | None:
    """The path template of the route the app's router matched (``/v1/models/{name}/segment``):
    the router leaves the route in ``scope["route"]``, so labels come from the app's own routes and
    none can be forgotten; None when no route matched (404)."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    return template if isinstance(template, str) else None


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, *, tracing: Tracing = NO_TRACING) -> None:
        self.app = app
        self.metrics = metrics
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_from(scope)
        scope.setdefault("state", {})["request_id"] = rid
        path: str = scope["path"]
        status = 500
        bytes_out = 0
        start = time.perf_counter()
        # the route is known once the router has run: the span is named at its end
        span = self.tracing.start(method=scope["method"], route=None, path=path,
                                  headers=scope.get("headers", []), request_id=rid)

        async def send_wrapper(message: Message) -> None:
            nonlocal status, bytes_out
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                bytes_out += len(message.get("body", b""))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            template = route_template(scope)
            route = template or "unmatched"
            # the model the handler served (set in scope["state"] by the model routes)
            model: str | None = scope["state"].get("model")
            self.metrics.requests.labels(route=route, method=scope["method"], status=str(status),
                                         model=model or "").inc()
            self.metrics.latency.labels(route=route, model=model or "").observe(elapsed)
            extra: dict[str, Any] = scope["state"].get("log_extra", {})
            timings: Timings = scope["state"].get("timings") or Timings()
            fields: dict[str, Any] = {
                "event": "request", "request_id": rid, "method": scope["method"], "route": route,
                "path": path, "status": status, "duration_ms": round(elapsed * 1000, 2),
                "stages_ms": {k: round(v * 1000, 2) for k, v in timings.stages.items()},
                "tiles": 0, "model": model, "bytes_out": bytes_out, **extra,
            }
            if span.trace_id is not None:
                fields["trace_id"] = span.trace_id  # finds the trace from the log line
            log_request(fields)
            attributes: dict[str, str | int] = {"pspnet.tiles": fields["tiles"]}
            if model is not None:
                attributes["pspnet.model"] = model
            span.end(status=status, stages=timings.intervals, attributes=attributes, route=template)
