"""The HTTP app: ``create_app(settings)``; engine, batcher and metrics live in the lifespan."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from service import openapi, web
from service.artifact import MODES, ArtifactMeta, Mode
from service.batcher import TileBatcher
from service.chain import Chain, DecodeLimits, Timings
from service.encode import OverlayFormat
from service.engine import Engine
from service.errors import (
    PROBLEM_MEDIA_TYPE,
    BadRequest,
    DeadlineExceeded,
    NotReady,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
    http_problem,
    problem_body,
    status_of,
)
from service.memory import MemoryBudget
from service.metrics import Metrics
from service.middleware import ObservabilityMiddleware
from service.openapi import ModelsResponse, Readiness, problems, segment_operation
from service.outputs import FORMATS, OutputOptions, output_format
from service.params import InferenceParams, check_query, resolve
from service.settings import Settings
from service.tracing import Tracing, from_environment

log = logging.getLogger("pspnet.app")
ROUTES = frozenset({"/v1/segment", "/v1/models", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json"}
                   | web.ROUTES)
#: multipart framing around the image part may add this much to the body
MULTIPART_OVERHEAD = 64 * 1024


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    meta: ArtifactMeta | None = None
    engine: Engine | None = None
    batcher: TileBatcher | None = None
    chain: Chain | None = None
    memory: MemoryBudget | None = None
    executor: ThreadPoolExecutor | None = None
    ready: bool = False
    warmup_seconds: float | None = None
    background: set[asyncio.Task[None]] = field(default_factory=set)


def _state(request: Request) -> ServiceState:
    s: ServiceState = request.app.state.service
    return s


def _problem(exc: BaseException, request: Request, **extra: Any) -> JSONResponse:
    """Any exception as application/problem+json, with the error's own headers."""
    rid = str(request.scope.get("state", {}).get("request_id", ""))
    headers: dict[str, str] = {}
    if isinstance(exc, StarletteHTTPException):
        # routing errors (404, 405): same shape, Starlette's status
        status = exc.status_code
        body = http_problem(status, str(exc.detail), request_id=rid, instance=request.url.path)
        headers.update(exc.headers or {})
    else:
        status = status_of(exc)
        body = problem_body(exc, request_id=rid, instance=request.url.path)
        if isinstance(exc, ServiceError):
            headers.update(exc.headers())
    return JSONResponse({**body, **extra}, status_code=status, headers=headers,
                        media_type=PROBLEM_MEDIA_TYPE)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _image_bytes(request: Request, settings: Settings) -> tuple[bytes, str | None]:
    """The upload as bytes and its declared type: multipart field ``image`` or a raw body."""
    ctype = request.headers.get("content-type")
    base = (ctype or "").split(";")[0].strip().lower()
    if base == "multipart/form-data":
        raw = await _read_body(request, settings.max_body_bytes + MULTIPART_OVERHEAD)

        async def replay() -> Message:
            return {"type": "http.request", "body": raw, "more_body": False}

        form = await Request(request.scope, replay).form(max_files=1, max_fields=16)
        part = form.get("image")
        if part is None or isinstance(part, str):
            raise BadRequest("multipart body needs a file field named 'image'")
        data = await part.read()
        if len(data) > settings.max_body_bytes:
            raise PayloadTooLarge(f"image is over the limit of {settings.max_body_bytes} bytes")
        return data, part.content_type
    if base and not (base.startswith("image/") or base == "application/octet-stream"):
        raise UnsupportedMediaType(
            f"send the image as a raw body with an image/* Content-Type or as multipart field 'image', "
            f"not {base}")
    return await _read_body(request, settings.max_body_bytes), ctype


async def _until_disconnect(receive: Callable[[], Awaitable[Message]]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _auth(request: Request) -> None:
    token = _state(request).settings.auth_token
    if token is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    expected = token.get_secret_value().encode()
    # compare_digest on bytes: the time does not depend on where the strings differ
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected):
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")


def create_app(settings: Settings, *, tracing: Tracing | None = None) -> FastAPI:
    """``tracing``: spans per request; None reads the OTEL_* variables (service/tracing.py)."""
    tracing = from_environment() if tracing is None else tracing
    metrics = Metrics()
    state = ServiceState(settings=settings, metrics=metrics,
                         memory=MemoryBudget(settings.max_memory_mb * 2**20,
                                             on_reject=lambda: metrics.on_reject("memory")))

    async def warm_up() -> None:
        assert state.engine is not None
        t0 = time.perf_counter()
        if settings.warmup:
            await asyncio.to_thread(state.engine.warmup, range(1, settings.max_batch + 1))
        state.warmup_seconds = time.perf_counter() - t0
        state.ready = True
        metrics.ready.set(1)
        log.info("ready: provider %s, warm-up %.2f s", state.engine.provider, state.warmup_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = await asyncio.to_thread(
            Engine, settings.model, provider=settings.provider,
            intra_op_threads=settings.intra_op_threads, inter_op_threads=settings.inter_op_threads,
            max_batch=settings.max_batch, spin=settings.ort_spin, sessions=settings.sessions)
        state.engine, state.meta = engine, engine.meta
        state.executor = ThreadPoolExecutor(settings.cpu_workers, thread_name_prefix="pspnet-cpu")
        state.batcher = TileBatcher(engine.runners(), max_batch=settings.max_batch,
                                    max_wait_ms=settings.max_wait_ms,
                                    max_queue_tiles=settings.max_queue_tiles,
                                    max_queue_delay_s=settings.max_queue_delay_s, observer=metrics,
                                    tile_shape=(3, *engine.tile))
        await state.batcher.start()
        state.chain = Chain(engine.meta, DecodeLimits(settings.max_body_bytes, settings.max_pixels))
        m = engine.meta
        metrics.model_info.labels(name=m.name, dataset=m.dataset, provider=engine.provider,
                                  tile=f"{m.tile[0]}x{m.tile[1]}", classes=str(m.num_classes)).set(1)
        task = asyncio.create_task(warm_up())
        state.background.add(task)
        task.add_done_callback(state.background.discard)
        try:
            yield
        finally:
            state.ready = False
            metrics.ready.set(0)
            for t in list(state.background):
                t.cancel()
            await state.batcher.stop(drain=True)
            state.executor.shutdown(wait=True)
            # flush the spans here: uvicorn ends the process by re-raising SIGTERM, so no atexit runs
            await asyncio.to_thread(tracing.shutdown)
            log.info("stopped")

    # /docs is served by service/web.py from installed files (FastAPI's loads Swagger UI from a CDN)
    app = FastAPI(title="PSPNet segmentation", version="0.1.0", lifespan=lifespan,
                  description="Semantic segmentation with PSPNet on ONNX Runtime.",
                  docs_url=None, redoc_url=None,
                  # operationIds are the handlers' names ("segment"), so generated clients read well
                  generate_unique_id_function=lambda route: route.name)
    app.state.service = state
    app.include_router(web.router())
    openapi.install(app, secured_by=_auth if settings.auth_token is not None else None)

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return _problem(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body"))
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return _problem(BadRequest("; ".join(parts) or "invalid request"), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _problem(exc, request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        response = _problem(exc, request)
        # this handler runs outside the middleware stack, so the id header is added here
        response.headers["X-Request-ID"] = str(request.scope.get("state", {}).get("request_id", ""))
        return response

    app.add_middleware(ObservabilityMiddleware, metrics=metrics, routes=ROUTES, tracing=tracing,
                       model_name=lambda: state.meta.name if state.meta else None)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process serves HTTP."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={200: {"model": Readiness}, **problems(503)})
    async def readyz(request: Request) -> Response:
        """Readiness: model loaded and warmed up; names the execution provider really in use."""
        body: dict[str, Any] = {
            "ready": state.ready,
            "provider": state.engine.provider if state.engine else None,
            "fallback_reason": getattr(state.engine, "fallback_reason", None),
            "model": state.meta.name if state.meta else None,
            "warmup_seconds": state.warmup_seconds,
        }
        if not state.ready:
            return _problem(NotReady("model is loading or warming up", retry_after=1), request, **body)
        return JSONResponse(body)

    @app.get("/metrics", tags=["health"], response_class=Response,
             responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}})
    async def prometheus_metrics() -> Response:
        if state.batcher is not None:
            metrics.queue_tiles.set(state.batcher.queue_depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["inference"], dependencies=[Depends(_auth)],
             response_model=ModelsResponse, responses=problems(401, 503))
    async def models() -> dict[str, Any]:
        """The served model: classes with colours, tile, protocol defaults, provider."""
        if state.meta is None or state.engine is None:
            raise NotReady("model is loading", retry_after=1)
        m = state.meta
        return {"models": [{
            "name": m.name, "dataset": m.dataset, "tile": list(m.tile),
            "classes": [{"id": i, "name": n, "color": list(c)}
                        for i, (n, c) in enumerate(zip(m.classes, m.palette, strict=True))],
            "protocol": m.to_json()["protocol"], "modes": list(MODES), "outputs": list(FORMATS),
            "provider": state.engine.provider, "source": m.source, "metrics": m.metrics,
        }]}

    # every error named here, 422 included, so that FastAPI documents none of its validation
    # bodies (ours are 400 problem+json); the body and the 200 in each media type: service/openapi.py
    @app.post("/v1/segment", tags=["inference"], dependencies=[Depends(_auth)],
              openapi_extra=segment_operation(), response_class=Response,
              responses=problems(400, 401, 413, 415, 422, 503, 504))
    async def segment(
        request: Request,
        mode: Annotated[Mode | None, Query(description="whole | slide | multiscale")] = None,
        flip: Annotated[bool | None, Query(description="also run mirrored tiles and average")] = None,
        scales: Annotated[str | None, Query(description="comma-separated, e.g. 0.75,1.0,1.25")] = None,
        output: Annotated[str, Query(description=" | ".join(FORMATS),
                                     json_schema_extra={"enum": list(FORMATS)})] = "color",
        # no defaults in the schema for these two: a generated client would send them every time,
        # and they are a 400 with any other output
        format: Annotated[OverlayFormat | None, Query(
            description="output=overlay only: jpeg (the default) or png")] = None,
        include_mask: Annotated[bool | None, Query(
            description="output=json only: add the label PNG, base64 (default false)")] = None,
    ) -> Response:
        """Segment one image: the raw body (Content-Type image/*) or multipart field ``image``."""
        if not state.ready or state.chain is None or state.meta is None:
            raise NotReady("model is loading or warming up", retry_after=1)
        output_format(output)  # an unknown format is a 400 before the body is read
        # so is a parameter that is unknown, repeated or means nothing to this output
        check_query([k for k, _ in request.query_params.multi_items()], output)
        params = resolve(state.meta.protocol, mode=mode, flip=flip, scales=scales,
                         max_scales=settings.max_scales)
        deadline = asyncio.get_running_loop().time() + settings.request_timeout_s
        data, ctype = await _image_bytes(request, settings)
        if state.batcher is not None:
            state.batcher.check_room()  # refuse before decoding what could not be queued anyway
        options = OutputOptions.from_settings(settings, overlay_format=format or "jpeg",
                                              include_mask=bool(include_mask))
        assert state.memory is not None
        # from the header, before decoding: an unreadable one costs nothing here, decoding refuses it
        need = state.chain.peak_bytes(data, params, output) or 0
        with state.memory.reserve(need):
            work = asyncio.ensure_future(_segment(state, data, ctype, params, output, options, deadline,
                                                  request))
            gone = asyncio.ensure_future(_until_disconnect(request.receive))
            try:
                await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if work.done():
                return work.result()
            # the client went away: cancelling drops its queued tiles before they run (a stage
            # already running in a thread finishes; its memory is released with the reservation)
            work.cancel()
        metrics.on_reject("client_gone")
        return Response(status_code=499)

    return app


async def _segment(state: ServiceState, data: bytes, ctype: str | None, params: InferenceParams,
                   output: str, options: OutputOptions, deadline: float, request: Request) -> Response:
    assert state.chain is not None and state.batcher is not None and state.executor is not None
    settings, metrics = state.settings, state.metrics
    timings = Timings()
    request.scope["state"]["timings"] = timings  # the access line and the trace read the stages
    try:
        async with asyncio.timeout_at(deadline):
            result = await state.chain.segment_batched(
                data, params, output, options, batcher=state.batcher, executor=state.executor,
                deadline=deadline, content_type=ctype, timings=timings)
    except TimeoutError:
        metrics.on_reject("deadline")
        raise DeadlineExceeded(f"not finished within {settings.request_timeout_s:g} s") from None
    for stage, seconds in timings.stages.items():
        metrics.stage.labels(stage=stage).observe(seconds)
    labels = result.labels
    request.scope["state"]["log_extra"] = {
        "mode": params.mode, "scales": list(params.scales), "flip": params.flip, "tiles": result.tiles,
        "output": output, "width": int(labels.shape[1]), "height": int(labels.shape[0]),
    }
    return Response(result.encoded.body, media_type=result.encoded.media_type, headers={
        "server-timing": timings.header(), "x-pspnet-tiles": str(result.tiles),
        "x-pspnet-mode": params.mode})
