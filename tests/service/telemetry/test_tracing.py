"""OpenTelemetry tracing: a span per request with a child per stage, a client's traceparent continued;
with the otel extra absent (simulated), or not configured, nothing changes.

Spans go to the SDK's in-memory exporter: nothing here touches the network.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.api.app import create_app
from service.engine.sessions import Engine
from service.settings import Settings
from service.telemetry import otel as tracing_otel
from service.telemetry.otel import OtelTracing
from service.telemetry.spans import NO_TRACING, Tracing
from service.telemetry.tracing import exporters_from, from_environment
from tests.service.api_client import png_bytes

STAGES = ["decode", "plan", "batch", "stitch", "encode"]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}  # never reached: nothing is exported


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # the machine's own OTEL_* must not decide these tests
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)


@asynccontextmanager
async def serving(model: Path, tracer: Tracing | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """The real app in-process (lifespan included, so its shutdown flushes the spans), once ready.

    A 500 reaches the client as a response, as over a socket (Starlette re-raises it for the server).
    """
    app = create_app(Settings(model=model, warmup=False), tracing=tracer)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            for _ in range(600):
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            yield client


def _segment(client: httpx.AsyncClient, **headers: str) -> Any:
    return client.post("/v1/segment?output=label", content=png_bytes(40, 60),
                       headers={"content-type": "image/png", **headers})


def _tracing_of(model: Path) -> Tracing:
    """What create_app gives the middleware when the environment decides."""
    app = create_app(Settings(model=model, warmup=False))
    (middleware,) = [m for m in app.user_middleware if "tracing" in m.kwargs]
    found: Tracing = middleware.kwargs["tracing"]
    return found


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _access_fields(caplog: pytest.LogCaptureFixture, request_id: str) -> dict[str, Any]:
    (record,) = [r for r in caplog.records if r.name == "pspnet.access"
                 and getattr(r, "fields", {}).get("request_id") == request_id]
    fields: dict[str, Any] = record.fields  # type: ignore[attr-defined]
    return fields


# --- the enabling rule -----------------------------------------------------------------------------

@pytest.mark.parametrize(("environ", "expected"), [
    ({}, []),
    (ENDPOINT, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
    ({"OTEL_TRACES_EXPORTER": " OTLP , console"}, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "none", **ENDPOINT}, []),
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, []),
    ({"OTEL_SDK_DISABLED": "true", **ENDPOINT}, []),
    ({"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "console"}, []),
    ({"OTEL_SDK_DISABLED": "false", **ENDPOINT}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, []),
    ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, []),  # no exporter asked for
])
def test_enabling_rule(environ: dict[str, str], expected: list[str]) -> None:
    assert exporters_from(environ) == expected


def test_configured_otlp_builds_the_http_exporter_with_a_batch_processor() -> None:
    built = from_environment({**ENDPOINT, "OTEL_TRACES_EXPORTER": "otlp,console"})
    try:
        assert isinstance(built, OtelTracing) and built.enabled
        assert [type(e) for e in built.exporters] == [OTLPSpanExporter, ConsoleSpanExporter]
        assert built.provider.resource.attributes["service.name"] == "pspnet-serving"
    finally:
        built.shutdown()


def test_otel_service_name_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "segmenter-eu")
    built = OtelTracing([InMemorySpanExporter()], batch=False)
    assert built.provider.resource.attributes["service.name"] == "segmenter-eu"
    built.shutdown()


# --- with the extra --------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_request_span_with_stage_children_continues_the_callers_trace(
        model: Path, caplog: pytest.LogCaptureFixture) -> None:
    exporter = InMemorySpanExporter()
    caplog.set_level(logging.INFO, logger="pspnet.access")
    async with serving(model, OtelTracing([exporter], batch=False)) as client:
        exporter.clear()  # readiness polls
        r = await _segment(client, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01", **{"x-request-id": "trace-1"})
        assert r.status_code == 200
    spans = exporter.get_finished_spans()
    (root,) = _by_name(spans, "POST /v1/segment")
    assert root.kind == SpanKind.SERVER
    # continued: the client's trace, the client's span as parent
    assert root.context is not None and root.parent is not None
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert format(root.parent.span_id, "016x") == PARENT_ID
    assert root.parent.is_remote
    attrs = dict(root.attributes or {})
    assert attrs["pspnet.request_id"] == "trace-1" == r.headers["x-request-id"]
    assert attrs["http.route"] == "/v1/segment" and attrs["http.request.method"] == "POST"
    assert attrs["http.response.status_code"] == 200 and attrs["pspnet.model"] == "tiny"
    assert attrs["pspnet.tiles"] == int(r.headers["x-pspnet-tiles"]) >= 1
    assert root.status.status_code == StatusCode.UNSET

    children = sorted((s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id),
                      key=lambda s: s.start_time or 0)
    assert [c.name for c in children] == STAGES
    assert root.start_time is not None and root.end_time is not None
    previous_end = root.start_time
    for child in children:  # in order, inside the request, none overlapping the next
        assert child.context is not None and child.context.trace_id == root.context.trace_id
        assert child.start_time is not None and child.end_time is not None
        assert previous_end <= child.start_time <= child.end_time <= root.end_time
        previous_end = child.end_time
    # the access line names the trace
    assert _access_fields(caplog, "trace-1")["trace_id"] == TRACE_ID


@pytest.mark.anyio
async def test_without_traceparent_a_new_trace_and_unmatched_paths_are_named_by_method(model: Path) -> None:
    exporter = InMemorySpanExporter()
    async with serving(model, OtelTracing([exporter], batch=False)) as client:
        exporter.clear()
        assert (await _segment(client)).status_code == 200
        assert (await client.get("/wp-admin/setup.php")).status_code == 404
        r = await client.post("/v1/segment", content=b"{}", headers={"content-type": "application/json"})
        assert r.status_code == 415
    spans = exporter.get_finished_spans()
    (root,) = [s for s in _by_name(spans, "POST /v1/segment")
               if dict(s.attributes or {})["http.response.status_code"] == 200]
    assert root.parent is None  # a trace of its own
    (lost,) = _by_name(spans, "GET")  # never the raw path: span names stay few
    assert "http.route" not in dict(lost.attributes or {})
    assert dict(lost.attributes or {})["url.path"] == "/wp-admin/setup.php"
    (refused,) = [s for s in _by_name(spans, "POST /v1/segment") if s is not root]
    assert refused.context is not None
    # refused before any stage ran: no children; a 4xx is the client's, not an error of the server
    assert not [s for s in spans if s.parent is not None and s.parent.span_id == refused.context.span_id]
    assert refused.status.status_code == StatusCode.UNSET


@pytest.mark.anyio
async def test_a_server_error_marks_the_span_and_keeps_the_stages_it_reached(
        model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the model fell over")

    monkeypatch.setattr(Engine, "run_outputs", broken)
    exporter = InMemorySpanExporter()
    async with serving(model, OtelTracing([exporter], batch=False)) as client:
        exporter.clear()
        assert (await _segment(client)).status_code == 500
    spans = exporter.get_finished_spans()
    (root,) = _by_name(spans, "POST /v1/segment")
    assert root.status.status_code == StatusCode.ERROR
    assert dict(root.attributes or {})["http.response.status_code"] == 500
    assert root.context is not None
    children = sorted((s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id),
                      key=lambda s: s.start_time or 0)
    assert [c.name for c in children] == ["decode", "plan", "batch"]


@pytest.mark.anyio
async def test_a_caller_that_does_not_sample_gets_no_spans(model: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    exporter = InMemorySpanExporter()
    caplog.set_level(logging.INFO, logger="pspnet.access")
    async with serving(model, OtelTracing([exporter], batch=False)) as client:
        exporter.clear()
        r = await _segment(client, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-00",
                           **{"x-request-id": "unsampled"})
        assert r.status_code == 200
    assert exporter.get_finished_spans() == ()
    assert _access_fields(caplog, "unsampled")["trace_id"] == TRACE_ID  # still the caller's trace


@pytest.mark.anyio
async def test_from_the_environment_spans_are_flushed_at_shutdown(model: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard variables alone turn it on (create_app reads them), batched; the lifespan flushes."""
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tracing_otel, "OTLPSpanExporter", lambda: exporter)
    for name, value in ENDPOINT.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # nothing leaves before the shutdown
    assert isinstance(_tracing_of(model), OtelTracing)
    async with serving(model) as client:
        assert (await _segment(client, **{"x-request-id": "env-1"})).status_code == 200
        assert _by_name(exporter.get_finished_spans(), "POST /v1/segment") == []
    (root,) = _by_name(exporter.get_finished_spans(), "POST /v1/segment")
    assert dict(root.attributes or {})["pspnet.request_id"] == "env-1"
    assert {s.name for s in exporter.get_finished_spans()} >= set(STAGES)


# --- without the extra -----------------------------------------------------------------------------

@pytest.fixture
def otel_absent(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As if the otel extra were not installed: every opentelemetry module fails to import."""
    names = {n for n in sys.modules if n == "opentelemetry" or n.startswith("opentelemetry.")}
    for name in names | {"opentelemetry", "opentelemetry.sdk", "opentelemetry.exporter"}:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: ImportError on import
    monkeypatch.delitem(sys.modules, "service.telemetry.otel", raising=False)
    with pytest.raises(ImportError):
        import opentelemetry.sdk.trace  # noqa: F401
    yield


def test_absent_extra_with_otel_configured_is_off_with_one_warning(otel_absent: None,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pspnet.tracing")
    assert from_environment(ENDPOINT) is NO_TRACING
    (warning,) = [r for r in caplog.records if r.name == "pspnet.tracing"]
    assert warning.levelno == logging.WARNING and "otel extra is not installed" in warning.getMessage()


def test_absent_extra_not_configured_says_nothing(otel_absent: None,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pspnet.tracing")
    assert from_environment({}) is NO_TRACING
    assert not [r for r in caplog.records if r.name == "pspnet.tracing"]


@pytest.mark.anyio
async def test_absent_extra_serves_exactly_as_before(otel_absent: None, model: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    for name, value in ENDPOINT.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.INFO)
    async with serving(model) as client:
        r = await _segment(client, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01", **{"x-request-id": "plain"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "plain"
        assert (await client.get("/healthz")).status_code == 200
    fields = _access_fields(caplog, "plain")
    assert "trace_id" not in fields and fields["status"] == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert _tracing_of(model) is NO_TRACING
