"""Pure ASGI middleware: request id, in-flight gauge, per-route metrics, one log line per request.

Metric labels are route templates (``/v1/segment``), never raw paths, so a
scan of random URLs cannot blow up the series count. Gauges are decremented in
``finally`` blocks so an exception never leaks a count.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

log = logging.getLogger("pspnet.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _VALID_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_from(scope)
        scope.setdefault("state", {})["request_id"] = rid
        path: str = scope["path"]
        route = path if path in self.routes else "unmatched"
        status = 500
        bytes_out = 0
        start = time.perf_counter()

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
            self.metrics.requests.labels(route=route, method=scope["method"], status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(elapsed)
            extra: dict[str, Any] = scope["state"].get("log_extra", {})
            log.info(json.dumps({
                "event": "request", "request_id": rid, "method": scope["method"], "path": path,
                "status": status, "duration_ms": round(elapsed * 1000, 2), "bytes_out": bytes_out,
                **extra,
            }, separators=(",", ":")))
