"""The one inference step of /v1 and /v2: a request's setup, admission, run and bookkeeping.

A route parses its protocol, then calls :func:`model_call` (the model, counted in flight and
labelled for metrics and the access line, serving now, the deadline) and :func:`infer` (room in
the queue, memory reserved from the image headers, the chain run against the client's hang-up
and the deadline, statistics and stage histograms), and builds its response from the result.
Data goes down once and the result comes back up: nothing calls back into the route.

Tested by tests/service/api/test_app.py, tests/service/api/test_faults.py and
tests/service/api/v2/test_routes.py (through both protocols).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from starlette.requests import Request

from service.api.uploads import until_disconnect
from service.codec.decode import DecodeLimits
from service.contract.soft import Soft
from service.errors import ClientGone, DeadlineExceeded, PayloadTooLarge
from service.pipeline.chain import Chain, Encode, Segmented, T, Upload
from service.pipeline.cost import declared_hw, pixels_cost, upload_cost
from service.pipeline.params import InferenceParams
from service.pipeline.timings import Timings
from service.repository.runtime import ModelRuntime
from service.repository.state import Service, service_of


@dataclass(frozen=True)
class Call:
    """One inference request on one model: what :func:`infer` needs besides the images."""

    request: Request
    service: Service
    rt: ModelRuntime
    deadline: float  # the event loop's clock


@contextlib.contextmanager
def model_call(request: Request, name: str | None = None, *,
               rt: ModelRuntime | None = None) -> Iterator[Call]:
    """The setup every inference request shares, for model ``name`` (the default model if None, or
    the runtime ``rt`` a route has already picked): counted in flight while the block runs, the
    metrics' and access line's model, serving now, its deadline ``PSPNET_REQUEST_TIMEOUT_S`` away."""
    service = service_of(request)
    picked = rt if rt is not None else (service.default_runtime() if name is None else service.runtime(name))
    with picked.admitted() as admitted:
        request.scope["state"]["model"] = admitted.name
        service.serving(admitted)
        deadline = asyncio.get_running_loop().time() + service.settings.request_timeout_s
        yield Call(request, service, admitted, deadline)


def memory_need(call: Call, images: Sequence[Upload] | np.ndarray, params: InferenceParams,
                output: str, soft: Soft | None = None) -> int:
    """Bytes the request will hold at its peak, from the image headers (or the pixels' shape),
    before anything is decoded: an unreadable header costs nothing here, decoding refuses it."""
    meta = call.rt.meta
    if isinstance(images, np.ndarray):
        n, h, w = (int(d) for d in images.shape[:3])
        return n * (pixels_cost(meta, h, w, params, output, soft=soft) or 0)
    return sum(upload_cost(meta, u.data, params, output, soft=soft) or 0 for u in images)


def check_output_size(call: Call, images: Sequence[Upload] | np.ndarray, soft: Soft | None) -> None:
    """413 before decoding when the soft output of these images would exceed
    ``PSPNET_MAX_OUTPUT_MB``, saying what would fit."""
    if soft is None:
        return
    if isinstance(images, np.ndarray):
        sizes: list[tuple[int, int] | None] = [(int(images.shape[1]), int(images.shape[2]))] * len(images)
    else:
        sizes = [declared_hw(u.data) for u in images]
    classes = call.rt.meta.num_classes
    total = sum(soft.output_bytes(*size, classes) for size in sizes if size is not None)
    limit = call.service.settings.max_output_mb * 2**20
    if total <= limit:
        return
    per_pixel = soft.output_bytes(1, 1, classes)
    fits = limit // (per_pixel * max(1, len(sizes)))
    cheaper = ("output=confidence or output=probability&class=NAME (4 bytes a pixel)"
               if soft.kind == "probabilities" else "output=color or output=label")
    raise PayloadTooLarge(
        f"{soft.kind} of {classes} classes here is {-(-total // 2**20)} MB; the server sends at most "
        f"{call.service.settings.max_output_mb} MB (PSPNET_MAX_OUTPUT_MB): images of at most {fits:,} "
        f"pixels fit, or ask for {cheaper}")


async def infer(call: Call, images: Sequence[Upload] | np.ndarray, params: InferenceParams, encode: Encode[T],
                *, output: str, soft: Soft | None = None) -> Segmented[T]:
    """Admit the request and run the chain on ``images``: a 503 now if the model's queue has no
    room, a 413/503 if its memory does not fit (the 503 with the queue's Retry-After), a 504 at the
    deadline, :class:`ClientGone` when the client hangs up (its queued tiles are dropped before
    they run; a stage already in a thread finishes)."""
    service, rt = call.service, call.rt
    rt.batcher.check_room()  # refuse before decoding what could not be queued anyway
    check_output_size(call, images, soft)
    need = memory_need(call, images, params, output, soft)
    with service.memory.reserve(need, retry_after=rt.batcher.retry_after()):
        job = asyncio.ensure_future(_accounted_run(call, images, params, encode, soft))
        gone = asyncio.ensure_future(until_disconnect(call.request.receive))
        try:
            await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if job.done():
            return job.result()
        job.cancel()
    service.metrics.on_reject("client_gone", rt.name)
    raise ClientGone


async def _accounted_run(call: Call, images: Sequence[Upload] | np.ndarray, params: InferenceParams,
                         encode: Encode[T], soft: Soft | None) -> Segmented[T]:
    service, rt = call.service, call.rt
    settings = service.settings
    chain = Chain(rt.meta, DecodeLimits(settings.max_body_bytes, settings.max_pixels), device=rt.device)
    assert service.executor is not None
    async with _accounted(call, images=len(images)) as timings, asyncio.timeout_at(call.deadline):
        return await chain.segment(images, params, encode, runner=rt.batcher, cpu=service.executor,
                                   deadline=call.deadline, timings=timings, soft=soft)


@contextlib.asynccontextmanager
async def _accounted(call: Call, *, images: int) -> AsyncIterator[Timings]:
    """One inference request's bookkeeping, the same for every protocol.

    Yields the request's timings (also put where the access line and the trace read them). A
    ``TimeoutError`` out of the body becomes a 504 counted under reason ``deadline``; any failure
    counts the request as failed in the model's statistics; success records it with its stages,
    and each stage's duration in the stage histogram.
    """
    service, rt = call.service, call.rt
    loop = asyncio.get_running_loop()
    timings = Timings()
    call.request.scope["state"]["timings"] = timings
    t0 = loop.time()
    try:
        yield timings
    except TimeoutError:
        service.metrics.on_reject("deadline", rt.name)
        rt.stats.request(ok=False, images=images, seconds=loop.time() - t0, stages={})
        raise DeadlineExceeded(f"not finished within {service.settings.request_timeout_s:g} s") from None
    except Exception:  # not a cancellation: a client that left is counted by infer
        rt.stats.request(ok=False, images=images, seconds=loop.time() - t0, stages={})
        raise
    rt.stats.request(ok=True, images=images, seconds=loop.time() - t0, stages=timings.stages)
    for stage, seconds in timings.stages.items():
        service.metrics.stage.labels(stage=stage, model=rt.name).observe(seconds)
