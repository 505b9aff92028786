"""Liveness, readiness and Prometheus: ``/healthz``, ``/readyz``, ``/metrics``.

``/healthz`` fails (503) only when every model is failing: a CUDA sticky error never
recovers in-process, and a failed liveness probe is how Kubernetes restarts the pod.
``/readyz`` is ready when every model is (Triton's strict readiness).

Tested by tests/service/api/test_app.py and tests/service/repository/test_runtime.py (every model
failing fails /healthz).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.openapi import Readiness, problems
from service.api.problems import problem_response
from service.errors import NotReady
from service.repository.state import service_of


def router() -> APIRouter:
    r = APIRouter(tags=["health"])

    @r.get("/healthz", responses=problems(503))
    async def healthz(request: Request) -> Response:
        """Liveness: the process serves HTTP, and not every model is failing."""
        service = service_of(request)
        if not service.live:
            failing = {rt.name: rt.health.last_error for rt in service.models.values()}
            return problem_response(NotReady(f"every model is failing: {failing}"), request)
        return JSONResponse({"status": "ok"})

    @r.get("/readyz", responses={200: {"model": Readiness}, **problems(503)})
    async def readyz(request: Request) -> Response:
        """Readiness: every model loaded, warmed up and not failing; names the execution provider
        really in use."""
        service = service_of(request)
        body = service.readiness()
        if not body["ready"]:
            return problem_response(NotReady(f"not ready: {service.not_ready_detail()}", retry_after=1),
                                    request, **body)
        return JSONResponse(body)

    @r.get("/metrics", response_class=Response,
           responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}})
    async def prometheus_metrics(request: Request) -> Response:
        service = service_of(request)
        metrics = service.metrics
        for rt in service.models.values():  # gauges read at scrape time
            metrics.queue_tiles.labels(model=rt.name).set(rt.batcher.queue_depth)
            metrics.ready.labels(model=rt.name).set(1 if rt.ready else 0)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return r
