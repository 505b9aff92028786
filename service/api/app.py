"""The HTTP app: ``create_app(settings)`` wires the routes, the middleware, the error handlers and
the lifespan; each concern lives in its own module.

- service/api/v1/routes.py: /v1/models, /v1/segment, /v1/models/{name}/segment
- service/api/v2/routes.py: the Open Inference Protocol (/v2)
- service/api/health.py: /healthz, /readyz, /metrics
- service/api/admin.py: /v1/admin/reload (only with a token)
- service/api/web.py: the page at / and the offline /docs
- service/api/problems.py: every error as a response; service/api/uploads.py: reading bodies
- service/repository/state.py: what lives between requests;
  service/repository/reload.py: the repository's (re)load

The lifespan loads the repository (every model's engine and batcher), warms the
models in the background (/readyz says 503 until all are warm), probes failing
models every ``probe_interval_s``, re-reads the repository on SIGHUP, and drains
everything on shutdown. As a worker of ``pspnet-serve --workers N`` (``board``) it also shares
the metrics, statistics, memory bound and readiness with the other workers and publishes its
state to them (service/repository/workers.py), and stops if the supervisor is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from service.api import admin as routes_admin
from service.api import health as routes_health
from service.api import openapi, problems, web
from service.api.auth import require_token
from service.api.middleware import ObservabilityMiddleware
from service.api.v1 import routes as routes_v1
from service.api.v2 import routes as routes_v2
from service.contract.version import server_version
from service.engine.admission import MemoryBudget
from service.engine.device_kit import DeviceBudget
from service.repository.reload import load_first, reload
from service.repository.state import Service
from service.repository.workers import WorkerBoard
from service.settings import Settings
from service.telemetry.metrics import Metrics
from service.telemetry.spans import Tracing
from service.telemetry.tracing import from_environment

log = logging.getLogger("pspnet.app")
SERVER_VERSION = server_version()  # "0.1.0": the package's, as /v2 and the OpenAPI document say


#: how often a worker publishes its state to the others (seconds)
PUBLISH_EVERY_S = 0.25


def create_app(settings: Settings, *, tracing: Tracing | None = None,
               board: WorkerBoard | None = None) -> FastAPI:
    """``tracing``: spans per request; None reads the OTEL_* variables (service/telemetry/tracing.py).
    ``board``: this process is one worker of several (service/repository/workers.py)."""
    tracing = from_environment() if tracing is None else tracing
    metrics = Metrics(None if board is None else board.root / "metrics")
    service = Service(settings=settings, metrics=metrics, tracing=tracing, board=board,
                      memory=MemoryBudget(settings.max_memory_mb * 2**20,
                                          on_reject=lambda: metrics.on_reject("memory"),
                                          shared=None if board is None else board.memory),
                      device=DeviceBudget(settings.device_stitch_mb * 2**20,
                                          shared=None if board is None else board.device))

    def background(coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        service.background.add(task)
        task.add_done_callback(service.background.discard)

    async def warm_all() -> None:
        await asyncio.gather(*(rt.warm_up(settings) for rt in list(service.models.values())))
        service.loaded = True
        service.publish()
        log.info("ready: %s", ", ".join(f"{rt.name} on {rt.engine.provider}"
                                        for rt in service.models.values()))

    async def probe_failing() -> None:
        while True:
            await asyncio.sleep(settings.probe_interval_s)
            for rt in list(service.models.values()):
                if rt.health.failing and rt.accepting:
                    await rt.probe()

    async def publish(board: WorkerBoard) -> None:
        while True:
            service.publish()
            for rt in list(service.models.values()):  # this worker's share of the gauges
                metrics.queue_tiles.labels(model=rt.name).set(rt.batcher.queue_depth)
                metrics.ready.labels(model=rt.name).set(1 if rt.ready else 0)
            if board.orphaned():
                log.error("the supervisor is gone: stopping")
                os.kill(os.getpid(), signal.SIGTERM)
                return
            await asyncio.sleep(PUBLISH_EVERY_S)

    async def reload_logged() -> None:
        try:
            report = await reload(service)
            log.info("reload (SIGHUP): %s", report.json())
        except Exception as e:  # Conflict: logged by reload; anything else is a bug, logged here
            log.error("reload (SIGHUP) failed: %s", e)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.executor = ThreadPoolExecutor(settings.cpu_workers, thread_name_prefix="pspnet-cpu")
        await load_first(service)
        background(warm_all())
        background(probe_failing())
        if board is not None:
            background(publish(board))
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: background(reload_logged()))
            hup = True
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests), or no SIGHUP
            hup = False
        try:
            yield
        finally:
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            for t in list(service.background):
                t.cancel()
            await asyncio.gather(*service.background, return_exceptions=True)
            await asyncio.gather(*(rt.stop(drain=True, grace_s=0) for rt in service.models.values()))
            service.executor.shutdown(wait=True)
            # flush the spans here: uvicorn ends the process by re-raising SIGTERM, so no atexit runs
            await asyncio.to_thread(tracing.shutdown)
            log.info("stopped")

    # /docs is served by service/api/web.py from installed files (FastAPI's loads Swagger UI from a CDN)
    app = FastAPI(title="PSPNet segmentation", version=SERVER_VERSION, lifespan=lifespan,
                  description="Semantic segmentation with PSPNet on ONNX Runtime.",
                  docs_url=None, redoc_url=None,
                  # operationIds are the handlers' names ("segment"), so generated clients read well
                  generate_unique_id_function=lambda route: route.name)
    app.state.service = service
    problems.install(app)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, tracing=tracing)
    app.include_router(web.router())
    app.include_router(routes_health.router())
    app.include_router(routes_v1.router())
    app.include_router(routes_v2.router(SERVER_VERSION))
    if settings.auth_token is not None:
        app.include_router(routes_admin.router())
    openapi.install(app, secured_by=require_token if settings.auth_token is not None else None)
    return app

