"""Running one request's work on a model: its memory reserved, abandoned when the client hangs up
(its queued tiles are dropped before they run). The caller counts it in flight
(:meth:`service.runtime.ModelRuntime.admitted`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from service.runtime import ModelRuntime
from service.state import Service
from service.uploads import until_disconnect

CLIENT_CLOSED = 499  # nginx's status for a client that went away: logged, never sent


async def run_admitted(request: Request, service: Service, rt: ModelRuntime, need_bytes: int,
                       work: Callable[[], Awaitable[Response]]) -> Response:
    with service.memory.reserve(need_bytes):
        job = asyncio.ensure_future(work())
        gone = asyncio.ensure_future(until_disconnect(request.receive))
        try:
            await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if job.done():
            return job.result()
        # the client went away: cancelling drops its queued tiles before they run (a stage
        # already running in a thread finishes; its memory is released with the reservation)
        job.cancel()
    service.metrics.on_reject("client_gone", rt.name)
    return Response(status_code=CLIENT_CLOSED)
