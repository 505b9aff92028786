"""Our own API: ``/v1/models``, ``/v1/models/{name}``, ``/v1/segment`` (the default model) and
``/v1/models/{name}/segment`` (any model of the repository), with the same body and parameters."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from service.api.auth import require_token
from service.api.inference import accounted, run_admitted
from service.api.openapi import ModelInfo, ModelsResponse, problems, segment_operation
from service.api.uploads import image_bytes
from service.api.v1.query import check_no_query, check_query
from service.codec.encode import OverlayFormat
from service.codec.outputs import FORMATS, OutputOptions, output_format
from service.contract.artifact import Mode
from service.pipeline.params import InferenceParams, resolve
from service.repository.runtime import ModelRuntime
from service.repository.state import Service, service_of


@dataclass(frozen=True)
class SegmentQuery:
    mode: Mode | None
    flip: bool | None
    scales: str | None
    output: str
    format: OverlayFormat | None
    include_mask: bool | None


def segment_query(
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
) -> SegmentQuery:
    return SegmentQuery(mode, flip, scales, output, format, include_mask)


def router() -> APIRouter:
    r = APIRouter(tags=["inference"], dependencies=[Depends(require_token)])

    @r.get("/v1/models", response_model=ModelsResponse, responses=problems(400, 401))
    async def models(request: Request) -> dict[str, Any]:
        """Every model of the repository: classes with colours, tile, protocol defaults, provider,
        readiness; the files that are not served, with the reason."""
        check_no_query((k for k, _ in request.query_params.multi_items()), "/v1/models")
        return service_of(request).models_listing()

    @r.get("/v1/models/{name}", response_model=ModelInfo, responses=problems(400, 401, 404))
    async def model(request: Request, name: str) -> dict[str, Any]:
        """One model's entry of /v1/models."""
        check_no_query((k for k, _ in request.query_params.multi_items()), "/v1/models/{name}")
        service = service_of(request)
        return service.model_info(service.runtime(name))

    # every error named here, 422 included, so that FastAPI documents none of its validation
    # bodies (ours are 400 problem+json); the body and the 200 in each media type: service/api/openapi.py
    errors = problems(400, 401, 413, 415, 422, 503, 504)

    @r.post("/v1/segment", openapi_extra=segment_operation(), response_class=Response, responses=errors)
    async def segment(request: Request, q: Annotated[SegmentQuery, Depends(segment_query)]) -> Response:
        """Segment one image with the default model: the raw body (Content-Type image/*) or
        multipart field ``image``."""
        service = service_of(request)
        with service.default_runtime().admitted() as rt:
            return await _segment(request, service, rt, q)

    @r.post("/v1/models/{name}/segment", openapi_extra=segment_operation(), response_class=Response,
            responses=problems(400, 401, 404, 413, 415, 422, 503, 504))
    async def segment_with(request: Request, name: str,
                           q: Annotated[SegmentQuery, Depends(segment_query)]) -> Response:
        """Segment one image with model ``name``; body and parameters as /v1/segment."""
        service = service_of(request)
        with service.runtime(name).admitted() as rt:
            return await _segment(request, service, rt, q)

    return r


async def _segment(request: Request, service: Service, rt: ModelRuntime, q: SegmentQuery) -> Response:
    settings = service.settings
    request.scope["state"]["model"] = rt.name  # the metrics' and the access line's model
    service.serving(rt)
    output_format(q.output)  # an unknown format is a 400 before the body is read
    # so is a parameter that is unknown, repeated or means nothing to this output
    check_query([k for k, _ in request.query_params.multi_items()], q.output)
    params = resolve(rt.meta.protocol, mode=q.mode, flip=q.flip, scales=q.scales,
                     max_scales=settings.max_scales)
    deadline = asyncio.get_running_loop().time() + settings.request_timeout_s
    data, ctype = await image_bytes(request, settings.max_body_bytes)
    rt.batcher.check_room()  # refuse before decoding what could not be queued anyway
    options = OutputOptions.from_settings(settings, overlay_format=q.format or "jpeg",
                                          include_mask=bool(q.include_mask))
    # from the header, before decoding: an unreadable one costs nothing here, decoding refuses it
    need = rt.chain.peak_bytes(data, params, q.output) or 0
    return await run_admitted(request, service, rt, need, lambda: _run(
        request, service, rt, data, ctype, params, q.output, options, deadline))


async def _run(request: Request, service: Service, rt: ModelRuntime, data: bytes, ctype: str | None,
               params: InferenceParams, output: str, options: OutputOptions, deadline: float) -> Response:
    assert service.executor is not None
    async with accounted(request, service, rt, images=1) as timings, asyncio.timeout_at(deadline):
        result = await rt.chain.segment_batched(
            data, params, output, options, batcher=rt.batcher, executor=service.executor,
            deadline=deadline, content_type=ctype, timings=timings)
    labels = result.labels
    request.scope["state"]["log_extra"] = {
        "mode": params.mode, "scales": list(params.scales), "flip": params.flip, "tiles": result.tiles,
        "output": output, "width": int(labels.shape[1]), "height": int(labels.shape[0]),
    }
    return Response(result.encoded.body, media_type=result.encoded.media_type, headers={
        "server-timing": timings.header(), "x-pspnet-tiles": str(result.tiles),
        "x-pspnet-mode": params.mode})
