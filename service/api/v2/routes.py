"""The Open Inference Protocol (KServe v2) over HTTP, as Triton serves it.

Server: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``. Per model (version
"1" only; ``/versions/1`` may be given): metadata, ``/ready``, ``/config``,
``/stats`` and ``POST /infer``; ``GET /v2/models/stats`` for all models;
``POST /v2/repository/index``, the index of Triton's model repository extension
(every model with its state; not its load and unload). An
inference request sends exactly one input: ``image`` (BYTES [N], encoded files,
every format /v1 takes) or ``pixels`` (UINT8 [N, H, W, 3], or [H, W, 3]
unbatched, RGB); the output ``labels`` has the input's size, and ``probabilities``
(FP16 [N, C, H, W], binary data only) comes when asked for. Its
``parameters`` are /v1's: ``mode``, ``flip``, ``scales`` (a list or a
comma-separated string). Errors are ``{"error": ...}`` with /v1's statuses
(service/api/problems.py); every /v1 limit applies.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from service.api.auth import require_token
from service.api.inference import Call, infer, model_call
from service.api.openapi import RepositoryIndexEntry, index_operation, infer_operation, oip_errors
from service.api.uploads import read_body
from service.api.v2.codec import (
    BYTES,
    HEADER_LENGTH,
    InferRequest,
    Output,
    Tensor,
    encode_response,
    parse_request,
)
from service.api.v2.models import (
    LOADING,
    MODEL_VERSION,
    READY,
    UNAVAILABLE,
    UNLOADING,
    config,
    index_entry,
    metadata,
    parse_index_request,
)
from service.contract.soft import Soft
from service.errors import BadRequest, NotFound, PayloadTooLarge
from service.pipeline.chain import Upload
from service.pipeline.params import InferenceParams, resolve
from service.repository.runtime import ModelRuntime
from service.repository.state import Service, service_of

SERVER_NAME = "pspnet-serving"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics"]
#: request parameters with a meaning here; the protocol's own are allowed and ignored
PARAMETERS = {"mode", "flip", "scales"}
#: what a model answers: ``labels`` (by default) and, when asked for, ``probabilities`` (FP16 [C, H, W])
OUTPUTS = ("labels", "probabilities")
PROTOCOL_PARAMETERS = {"binary_data_output"}
#: an index request is at most {"ready": true}: a body beyond this is refused (413) unread
INDEX_BODY_LIMIT = 4096
V = "/v2/models/{name}"
VV = "/v2/models/{name}/versions/{version}"


def _model(request: Request, name: str, version: str | None) -> ModelRuntime:
    if version is not None and version != MODEL_VERSION:
        raise NotFound(f"model {name!r} has version {MODEL_VERSION} only, not {version!r}")
    rt = service_of(request).runtime(name)
    request.scope["state"]["model"] = rt.name  # the metrics' and the access line's model
    return rt


def router(server_version: str) -> APIRouter:
    public = APIRouter(tags=["open inference protocol"])
    r = APIRouter(tags=["open inference protocol"], dependencies=[Depends(require_token)])

    @public.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": server_version, "extensions": EXTENSIONS}

    @public.get("/v2/health/live", responses=oip_errors(503))
    async def live(request: Request) -> Response:
        if service_of(request).live:
            return JSONResponse({"live": True})
        return JSONResponse({"error": "every model is failing", "live": False}, status_code=503)

    @public.get("/v2/health/ready", responses=oip_errors(503))
    async def ready(request: Request) -> Response:
        service = service_of(request)
        if service.ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"error": f"not ready: {service.not_ready_detail()}", "ready": False},
                            status_code=503, headers={"Retry-After": "1"})

    @r.get("/v2/models/stats", responses=oip_errors(401))
    async def all_stats(request: Request) -> dict[str, Any]:
        service = service_of(request)
        return {"model_stats": [rt.stats.json(rt.name, MODEL_VERSION) for rt in service.models.values()]}

    @r.post("/v2/repository/index", response_model=list[RepositoryIndexEntry],
            response_model_exclude_none=True, openapi_extra=index_operation(),
            responses=oip_errors(400, 401, 413))
    async def repository_index(request: Request) -> list[dict[str, str]]:
        """Every model of the repository with its state (Triton's model repository extension): the
        served ones, version "1", and the files that are not served, UNAVAILABLE with the reason.
        A body ``{"ready": true}`` keeps only the models ready for inference."""
        ready_only = parse_index_request(await read_body(request, INDEX_BODY_LIMIT))
        return repository_index_of(service_of(request), ready_only=ready_only)

    for prefix in (V, VV):
        def routes(prefix: str = prefix) -> None:  # a closure per prefix, so each route has its path
            found = oip_errors(401, 404)
            suffix = "_versioned" if prefix == VV else ""

            @r.get(prefix, name=f"model_metadata{suffix}", responses=found)
            async def model_metadata(request: Request, name: str,
                                     version: str | None = None) -> dict[str, Any]:
                return metadata(_model(request, name, version).meta)

            @r.get(prefix + "/ready", name=f"model_ready{suffix}", responses=oip_errors(401, 404, 503))
            async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
                rt = _model(request, name, version)
                if rt.ready:
                    return JSONResponse({"name": name, "ready": True})
                return JSONResponse({"error": f"model {name} is not ready: {rt.not_ready_reason()}",
                                     "name": name, "ready": False}, status_code=503,
                                    headers={"Retry-After": "1"})

            @r.get(prefix + "/config", name=f"model_config{suffix}", responses=found)
            async def model_config(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
                service = service_of(request)
                rt = _model(request, name, version)
                return config(rt.meta, max_batch_tiles=service.settings.max_batch,
                              max_wait_ms=service.settings.max_wait_ms)

            @r.get(prefix + "/stats", name=f"model_stats{suffix}", responses=found)
            async def model_stats(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
                rt = _model(request, name, version)
                return {"model_stats": [rt.stats.json(rt.name, MODEL_VERSION)]}

            @r.post(prefix + "/infer", name=f"model_infer{suffix}", openapi_extra=infer_operation(),
                    responses=oip_errors(400, 401, 404, 413, 415, 422, 503, 504))
            async def model_infer(request: Request, name: str, version: str | None = None) -> Response:
                with model_call(request, rt=_model(request, name, version)) as call:
                    return await _infer(call)

        routes()

    public.include_router(r)
    return public


def _state(rt: ModelRuntime) -> str:
    """A served model's state as Triton names it (the reason is :meth:`ModelRuntime.not_ready_reason`)."""
    if rt.ready:
        return READY
    if not rt.accepting:
        return UNLOADING
    if rt.health.failing:
        return UNAVAILABLE
    return LOADING


def repository_index_of(service: Service, *, ready_only: bool = False) -> list[dict[str, str]]:
    """The body of ``POST /v2/repository/index``, sorted by name."""
    entries = [index_entry(rt.name, _state(rt), rt.not_ready_reason()) for rt in service.models.values()]
    # a file that is not served, under the name it would have (its file's stem when unreadable);
    # left out where that name is served from another file, so that a name has one entry
    entries += [index_entry(e.name, UNAVAILABLE, e.error or "not a usable artifact", version=None)
                for e in service.unavailable.values() if e.name not in service.models]
    if ready_only:
        entries = [e for e in entries if e["state"] == READY]
    return sorted(entries, key=lambda e: e["name"])


def _params(rt: ModelRuntime, req: InferRequest, max_scales: int) -> InferenceParams:
    p = req.parameters
    unknown = sorted(set(p) - PARAMETERS - PROTOCOL_PARAMETERS)
    if unknown:
        raise BadRequest(f"unknown request parameters {unknown}; allowed: {sorted(PARAMETERS)}")
    mode, flip, scales = p.get("mode"), p.get("flip"), p.get("scales")
    if mode is not None and not isinstance(mode, str):
        raise BadRequest("parameter 'mode' must be a string")
    if flip is not None and not isinstance(flip, bool):
        raise BadRequest("parameter 'flip' must be true or false")
    if isinstance(scales, list):
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scales):
            raise BadRequest("parameter 'scales' must be numbers")
        scales = ",".join(repr(float(s)) for s in scales)
    elif scales is not None and not isinstance(scales, str):
        raise BadRequest("parameter 'scales' must be a list of numbers or a comma-separated string")
    return resolve(rt.meta.protocol, mode=mode, flip=flip, scales=scales, max_scales=max_scales)


def _one_input(req: InferRequest) -> Tensor:
    names = [t.name for t in req.inputs]
    if len(req.inputs) != 1 or names[0] not in ("image", "pixels"):
        raise BadRequest(f"send exactly one input, 'image' (BYTES, encoded files) or 'pixels' (UINT8 "
                         f"[N, H, W, 3]); got {names}")
    t = req.inputs[0]
    if t.name == "image" and (t.datatype != BYTES or len(t.shape) != 1 or t.shape[0] < 1):
        raise BadRequest(f"input 'image' must be BYTES of shape [N], N >= 1; got {t.datatype} "
                         f"{list(t.shape)}")
    if t.name == "pixels" and (t.datatype != "UINT8" or len(t.shape) not in (3, 4) or t.shape[-1] != 3
                               or 0 in t.shape):
        raise BadRequest(f"input 'pixels' must be UINT8 of shape [H, W, 3] or [N, H, W, 3]; got {t.datatype} "
                         f"{list(t.shape)}")
    for out in req.outputs or ():
        if out.name not in OUTPUTS:
            raise BadRequest(f"unknown output {out.name!r}: a model has {' and '.join(map(repr, OUTPUTS))}")
    return t


def _outputs(req: InferRequest) -> list[str]:
    """The outputs asked for: those named; none named means ``labels`` (``probabilities``, 2 bytes a
    pixel and class, come only when asked for, and only as binary data: as JSON numbers they would
    be about ten times that)."""
    names = [o.name for o in req.outputs] if req.outputs else ["labels"]
    if "probabilities" in names and not req.binary_output("probabilities"):
        raise BadRequest("output 'probabilities' is sent as binary data only: ask for it with "
                         "parameters.binary_data true (the binary tensor data extension)")
    return names


async def _infer(call: Call) -> Response:
    request, settings, rt = call.request, call.service.settings, call.rt
    body = await read_body(request, settings.max_body_bytes)
    # off the event loop: a JSON tensor of 360x480 pixels takes about 0.2 s to parse, 20 MB over a second
    req = await asyncio.get_running_loop().run_in_executor(call.service.executor, functools.partial(
        parse_request, body, request.headers.get(HEADER_LENGTH), max_elements=settings.max_pixels * 3))
    tensor = _one_input(req)
    params = _params(rt, req, settings.max_scales)
    images: list[Upload] | np.ndarray
    if tensor.name == "pixels":
        assert isinstance(tensor.data, np.ndarray)
        batched = tensor.data.ndim == 4
        images = tensor.data if batched else tensor.data[None]
        h, w = images.shape[1:3]
        if h * w > settings.max_pixels:
            raise PayloadTooLarge(f"{w}x{h} pixels is over the limit of {settings.max_pixels}")
    else:
        assert isinstance(tensor.data, list)
        batched = True
        images = [Upload(data) for data in tensor.data]

    names = _outputs(req)
    soft = Soft("probabilities") if "probabilities" in names else None

    def encode(rgbs: Sequence[np.ndarray], labels: Sequence[np.ndarray],
               softs: Sequence[np.ndarray | None]) -> tuple[bytes, dict[str, str]]:
        # the chain's label maps are already of the one label dtype (service.contract.artifact.label_dtype);
        # probabilities are (C, H, W) float16 per image
        arrays: dict[str, list[np.ndarray]] = {"labels": list(labels),
                                               "probabilities": [v for v in softs if v is not None]}
        outputs = [Output(n, np.stack(arrays[n]) if batched else arrays[n][0]) for n in names]
        return encode_response(rt.name, MODEL_VERSION, req.id, outputs, [req.binary_output(n) for n in names])

    result = await infer(call, images, params, encode, output="label", soft=soft)
    body, headers = result.encoded
    request.scope["state"]["log_extra"] = {"mode": params.mode, "scales": list(params.scales),
                                           "flip": params.flip, "tiles": result.tiles, "images": len(images)}
    headers["server-timing"] = result.timings.header()
    return Response(body, headers=headers)
