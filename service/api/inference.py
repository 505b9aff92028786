"""Running one request's work on a model: its memory reserved, abandoned when the client hangs up
(its queued tiles are dropped before they run), and accounted for (its stages, statistics and
deadline). The caller counts it in flight (:meth:`service.repository.runtime.ModelRuntime.admitted`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from service.api.uploads import until_disconnect
from service.errors import DeadlineExceeded
from service.pipeline.timings import Timings
from service.repository.runtime import ModelRuntime
from service.repository.state import Service

CLIENT_CLOSED = 499  # nginx's status for a client that went away: logged, never sent


async def run_admitted(request: Request, service: Service, rt: ModelRuntime, need_bytes: int,
                       work: Callable[[], Awaitable[Response]]) -> Response:
    # a refusal says when to retry by the one rule of overload 503s: this model's queued work
    with service.memory.reserve(need_bytes, retry_after=rt.batcher.retry_after()):
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


@contextlib.asynccontextmanager
async def accounted(request: Request, service: Service, rt: ModelRuntime, *,
                    images: int) -> AsyncIterator[Timings]:
    """One inference request's bookkeeping, the same for every protocol.

    Yields the request's :class:`Timings` (also put where the access line and the trace read
    them). A ``TimeoutError`` out of the body (``asyncio.timeout_at(deadline)`` there) becomes a
    504 counted under reason ``deadline``; any failure counts the request as failed in the
    model's statistics; success records it with its stages, and each stage's duration in the
    stage histogram.
    """
    loop = asyncio.get_running_loop()
    timings = Timings()
    request.scope["state"]["timings"] = timings
    t0 = loop.time()
    try:
        yield timings
    except TimeoutError:
        service.metrics.on_reject("deadline", rt.name)
        rt.stats.request(ok=False, images=images, seconds=loop.time() - t0, stages={})
        raise DeadlineExceeded(f"not finished within {service.settings.request_timeout_s:g} s") from None
    except Exception:  # not a cancellation: a client that left is counted by run_admitted
        rt.stats.request(ok=False, images=images, seconds=loop.time() - t0, stages={})
        raise
    rt.stats.request(ok=True, images=images, seconds=loop.time() - t0, stages=timings.stages)
    for stage, seconds in timings.stages.items():
        service.metrics.stage.labels(stage=stage, model=rt.name).observe(seconds)
