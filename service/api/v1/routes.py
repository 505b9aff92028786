"""Our own API: ``/v1/models``, ``/v1/models/{name}``, ``/v1/segment`` (the default model) and
``/v1/models/{name}/segment`` (any model of the repository), with the same body and parameters.

Tested by tests/service/api/test_app.py and tests/service/api/v1/test_query.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from service.api.auth import require_token
from service.api.inference import Call, infer, model_call
from service.api.openapi import ModelInfo, ModelsResponse, problems, segment_operation
from service.api.uploads import image_bytes
from service.api.v1.query import check_no_query, check_query
from service.codec.encode import OverlayFormat
from service.codec.outputs import (
    FORMATS,
    Encoded,
    OutputOptions,
    encode_output,
    output_format,
    soft_request,
)
from service.contract.artifact import Mode
from service.pipeline.chain import Upload
from service.pipeline.params import resolve
from service.repository.state import service_of


@dataclass(frozen=True)
class SegmentQuery:
    mode: Mode | None
    flip: bool | None
    scales: str | None
    output: str
    format: OverlayFormat | None
    include_mask: bool | None
    class_name: str | None


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
    class_name: Annotated[str | None, Query(
        alias="class", description="output=probability only: the class whose probability to send")] = None,
) -> SegmentQuery:
    return SegmentQuery(mode, flip, scales, output, format, include_mask, class_name)


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
        with model_call(request) as call:
            return await _segment(call, q)

    @r.post("/v1/models/{name}/segment", openapi_extra=segment_operation(), response_class=Response,
            responses=problems(400, 401, 404, 413, 415, 422, 503, 504))
    async def segment_with(request: Request, name: str,
                           q: Annotated[SegmentQuery, Depends(segment_query)]) -> Response:
        """Segment one image with model ``name``; body and parameters as /v1/segment."""
        with model_call(request, name) as call:
            return await _segment(call, q)

    return r


async def _segment(call: Call, q: SegmentQuery) -> Response:
    request, settings, meta = call.request, call.service.settings, call.rt.meta
    output_format(q.output)  # an unknown format is a 400 before the body is read
    # so is a parameter that is unknown, repeated or means nothing to this output
    check_query([k for k, _ in request.query_params.multi_items()], q.output)
    params = resolve(meta.protocol, mode=q.mode, flip=q.flip, scales=q.scales, max_scales=settings.max_scales)
    options = OutputOptions.from_settings(settings, overlay_format=q.format or "jpeg",
                                          include_mask=bool(q.include_mask), class_name=q.class_name)
    soft = soft_request(q.output, meta, options)  # an unknown class is a 400 before the body is read
    data, ctype = await image_bytes(request, settings.max_body_bytes)

    def encode(rgbs: Sequence[np.ndarray], labels: Sequence[np.ndarray],
               softs: Sequence[np.ndarray | None]) -> Encoded:
        # a soft format encodes its probabilities where the others encode the labels
        values = labels[0] if soft is None else softs[0]
        assert values is not None
        return encode_output(q.output, meta, rgbs[0], values, options)

    result = await infer(call, [Upload(data, ctype)], params, encode, output=q.output, soft=soft)
    labels = result.labels[0]
    request.scope["state"]["log_extra"] = {
        "mode": params.mode, "scales": list(params.scales), "flip": params.flip, "tiles": result.tiles,
        "output": q.output, "width": int(labels.shape[1]), "height": int(labels.shape[0]),
    }
    return Response(result.encoded.body, media_type=result.encoded.media_type, headers={
        "server-timing": result.timings.header(), "x-pspnet-tiles": str(result.tiles),
        "x-pspnet-mode": params.mode})
