"""Every error as a response, in one place: ``application/problem+json`` (RFC 9457) on our own
routes, ``{"error": "..."}`` on the Open Inference Protocol's (/v2), as Triton and KServe answer.

The status and headers (``Retry-After``, ``WWW-Authenticate``) are the error's own
(service/errors.py) whichever the shape.

Tested by tests/service/api/test_app.py (problem+json on /v1) and
tests/service/api/v2/test_routes.py (the error shape of /v2).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import (
    CLIENT_CLOSED,
    INTERNAL_DETAIL,
    PROBLEM_MEDIA_TYPE,
    BadRequest,
    ClientGone,
    ServiceError,
    http_problem,
    problem_body,
    status_of,
)

log = logging.getLogger("pspnet.app")
V2_PREFIX = "/v2"


def problem_response(exc: BaseException, request: Request, **extra: Any) -> JSONResponse:
    """Any exception as the route's error shape, with the error's own headers."""
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
    if request.url.path == V2_PREFIX or request.url.path.startswith(V2_PREFIX + "/"):
        detail = str(body["detail"]) if status != 500 else f"{INTERNAL_DETAIL} (request id {rid})"
        return JSONResponse({"error": detail, **extra}, status_code=status, headers=headers)
    return JSONResponse({**body, **extra}, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def install(app: FastAPI) -> None:
    """The exception handlers of ``app``."""

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED)  # logged and counted; the client reads nothing

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "body"))
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return problem_response(BadRequest("; ".join(parts) or "invalid request"), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        response = problem_response(exc, request)
        # this handler runs outside the middleware stack, so the id header is added here
        response.headers["X-Request-ID"] = str(request.scope.get("state", {}).get("request_id", ""))
        return response
