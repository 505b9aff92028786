"""Request spans as the app sees them: the no-op base classes and what a stage interval is.

service/telemetry/tracing.py picks the implementation (this, or service/telemetry/otel.py).

Tested by tests/service/telemetry/test_tracing.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

#: a timed stage: (name, start, end) in ``time.perf_counter`` seconds (chain.Timings.intervals)
Interval = tuple[str, float, float]


#: span attribute values we set
Attribute = str | int | float | bool


SERVICE_NAME = "pspnet-serving"


class RequestSpan:
    """The span of one request; this base class is the no-op one (tracing off)."""

    #: the trace id (32 hex digits) for log lines, None when not traced
    trace_id: str | None = None

    def end(self, *, status: int, stages: Sequence[Interval], attributes: Mapping[str, Attribute],
            route: str | None = None) -> None:
        """Close the span with the response status, a child span per stage and more attributes;
        ``route``: the template the router matched (known only once the app has run)."""


class Tracing:
    """Makes request spans; this base class is the no-op one (tracing off)."""

    enabled = False

    def start(self, *, method: str, route: str | None, path: str, headers: Sequence[tuple[bytes, bytes]],
              request_id: str) -> RequestSpan:
        """A span for a request that starts now; ``route`` None for a path no route matched."""
        return _NO_SPAN

    def shutdown(self) -> None:
        """Export what is buffered and stop (the server's shutdown)."""


_NO_SPAN = RequestSpan()


NO_TRACING = Tracing()
