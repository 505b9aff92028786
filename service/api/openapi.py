"""The OpenAPI document beyond what FastAPI reads from the route signatures.

FastAPI derives the query parameters; what it cannot see is written here, so that
a client generated from ``/openapi.json`` is a usable one:

- the shapes of the JSON bodies: the segmentation (``output=json``), ``/v1/models``
  (which is also validated against its model on the way out) and readiness;
- every error as ``application/problem+json`` with the :class:`Problem` schema and
  the status it comes with (the table in service/errors.py);
- the request body of ``/v1/segment`` in every media type the decoder reads
  (service/codec/sniff.py ``IMAGE_FORMATS``), raw or as multipart field ``image``;
- the bearer scheme on the operations that check the token, only when a token is set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from service.codec.encode import RGB, ClassShare
from service.codec.outputs import media_types
from service.codec.sniff import IMAGE_FORMATS
from service.contract.artifact import Mode
from service.errors import PROBLEM_MEDIA_TYPE

REF = "#/components/schemas/{model}"
BEARER = "bearerAuth"
#: the media type of each format service/codec/sniff.py recognises (a KeyError below if one is missing)
IMAGE_MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif",
                     "BMP": "image/bmp", "TIFF": "image/tiff"}
#: what the error statuses mean, for the responses of every operation that can give them
ERRORS = {
    400: "bad parameters: unknown, repeated or not applicable to the output, or invalid values",
    401: "missing or wrong bearer token",
    404: "no model of that name (or version) is served",
    409: "the repository cannot be served as a whole (e.g. two artifacts with one name): nothing changed",
    413: "body or pixel count over the limit, or more tiles than the queue holds",
    415: "not an image format the service reads",
    422: "undecodable image",
    503: "overloaded or not ready; retry after Retry-After seconds",
    504: "deadline exceeded",
}


class Problem(BaseModel):
    """An error, RFC 9457 problem details; ``detail`` says what happened this time."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(description="stable identifier of the kind of error (urn:problem-type:pspnet:...)")
    title: str
    status: int
    detail: str
    instance: str = Field(description="the request path")
    request_id: str = Field(description="quote it when reporting a problem; also in X-Request-ID")


class Segmentation(BaseModel):
    """``output=json``: the classes present; the label map itself with ``include_mask=true``."""

    model: str
    width: int
    height: int
    classes: list[ClassShare] = Field(description="the classes present, by id")
    mask: str | None = Field(None, description="with include_mask=true: the label PNG (pixel value = "
                                                "class id; 16-bit beyond 256 classes), base64")


class ClassInfo(BaseModel):
    id: int
    name: str
    color: RGB


class ProtocolInfo(BaseModel):
    """The inference defaults a request gets when it leaves mode, scales or flip out."""

    mode: Mode
    base_size: int
    scales: list[float]
    stride_rate: float
    flip: bool


class ModelInfo(BaseModel):
    name: str
    dataset: str
    tile: list[int] = Field(description="height, width of the model's input tile")
    classes: list[ClassInfo]
    protocol: ProtocolInfo
    modes: list[Mode]
    outputs: list[str]
    provider: str = Field(description="the ONNX Runtime execution provider in use")
    stitch: str = Field(description=(
        "where stitched requests are stitched: cuda (the GPU, PSPNET_DEVICE_STITCH; a request that does "
        "not fit then goes to the host), cpu (the device stitch forced on the CPU), or host (the exact "
        "float64 stitch)"))
    source: dict[str, Any]
    metrics: dict[str, Any]
    ready: bool = Field(description="warmed up and not failing: it takes requests")
    default: bool = Field(description="the model /v1/segment serves")
    reason: str | None = Field(description="why it is not ready, when it is not")
    reload_error: str | None = Field(description="its file failed to load at the last reload; this "
                                                 "version keeps serving")


class UnavailableModel(BaseModel):
    """An ``.onnx`` file of the repository that is not served."""

    file: str
    name: str
    reason: str | None


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    unavailable: list[UnavailableModel] = Field(description="files of the model directory not served, "
                                                            "with the reason")
    default: str | None = Field(description="the model /v1/segment serves; null when there are several "
                                            "and PSPNET_DEFAULT_MODEL is not set")


class ModelReadiness(BaseModel):
    name: str
    ready: bool
    reason: str | None
    provider: str
    stitch: str = Field(description="cuda, cpu (the device stitch) or host, as in /v1/models")


class WorkerReadiness(BaseModel):
    slot: int
    pid: int | None = Field(description="null while the slot's worker is being replaced")
    ready: bool
    models: list[str] = Field(description="the model versions it serves (name@digest of the file)")
    requests: int = Field(description="requests this worker answered")


class Readiness(BaseModel):
    """Ready when every model is; provider, fallback_reason, model and warmup_seconds are the
    default model's. ``workers`` (only with --workers N): every worker process; the server is
    ready when every worker not being replaced is, serving the same model versions."""

    ready: bool
    provider: str | None
    fallback_reason: str | None
    model: str | None
    warmup_seconds: float | None
    models: list[ModelReadiness]
    workers: list[WorkerReadiness] | None = None


class RepositoryIndexEntry(BaseModel):
    """A model of ``POST /v2/repository/index``, as Triton's model repository extension lists it."""

    name: str
    version: str | None = Field(None, description='"1" for a served model; absent for a file never loaded')
    state: str = Field(description="READY, LOADING (warming up), UNAVAILABLE (failing, or a file not "
                                   "served) or UNLOADING (draining)")
    reason: str | None = Field(None, description="why the model is not READY; absent when it is")


#: models referenced by hand below (FastAPI registers those it uses as response_model itself)
DOCUMENTED: tuple[type[BaseModel], ...] = (Problem, Segmentation)


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses`` entries for these error statuses: problem+json, Retry-After with 503."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"description": ERRORS[status],
                                 "content": {PROBLEM_MEDIA_TYPE: {"schema": ref(Problem)}}}
        if status == 503:
            entry["headers"] = {"Retry-After": {"description": "seconds to wait before retrying",
                                                "required": True, "schema": {"type": "integer"}}}
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}}
        out[status] = entry
    return out


def oip_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Error responses of the Open Inference Protocol's routes: ``{"error": "..."}`` as JSON."""
    schema = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"description": ERRORS[status],
                                 "content": {"application/json": {"schema": schema}}}
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}}
        out[status] = entry
    return out


def index_operation() -> dict[str, Any]:
    """``openapi_extra`` of POST /v2/repository/index: an optional JSON body, ``{"ready": true}``."""
    return {"requestBody": {"required": False, "content": {"application/json": {"schema": {
        "type": "object", "additionalProperties": False,
        "properties": {"ready": {"type": "boolean", "description": "only the models ready for inference "
                                                                   "(default false: every model)"}}}}}}}


def infer_operation() -> dict[str, Any]:
    """``openapi_extra`` of POST /v2/models/{name}/infer: JSON, or JSON + binary tensor data."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"}, "parameters": {"type": "object"},
            "inputs": {"type": "array", "items": {"type": "object"}},
            "outputs": {"type": "array", "items": {"type": "object"}}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                     "description": "the JSON header (Inference-Header-Content-Length bytes) "
                                                    "followed by the inputs' binary data"},
    }}}


def image_media_types() -> list[str]:
    return [IMAGE_MEDIA_TYPES[f] for f in IMAGE_FORMATS]


def segment_operation() -> dict[str, Any]:
    """``openapi_extra`` of POST /v1/segment: its body and its 200 in every media type."""
    binary = {"type": "string", "format": "binary"}
    body: dict[str, Any] = {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                           "properties": {"image": binary}}},
        **{t: {"schema": binary} for t in [*image_media_types(), "application/octet-stream"]},
    }
    ok = {t: {"schema": ref(Segmentation) if t == "application/json" else binary} for t in media_types()}
    return {
        "requestBody": {"required": True, "content": body,
                        "description": "the image: " + ", ".join(IMAGE_FORMATS) + " (first frame); "
                                       "the format is read from the bytes, not from Content-Type"},
        "responses": {"200": {
            "description": "the segmentation, in the media type of the chosen output",
            "content": ok,
            "headers": {"Server-Timing": {"description": "time of each stage: decode, plan, batch, "
                                                         "stitch, encode", "schema": {"type": "string"}}},
        }},
    }


def install(app: FastAPI, *, secured_by: Callable[..., Any] | None) -> None:
    """Make ``app.openapi()`` the complete document.

    ``secured_by``: the dependency that checks the bearer token, when a token is set; the
    operations that depend on it get the scheme.
    """

    generate = app.openapi  # FastAPI's own: builds the document once and caches it on the app

    def openapi() -> dict[str, Any]:
        cached = app.openapi_schema is not None
        doc = generate()
        if not cached:
            _drop_validation_errors(doc)
            _add_models(doc, DOCUMENTED)
            if secured_by is not None:
                _add_bearer(doc, _secured(app.routes, secured_by))
        return doc

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise it


def _drop_validation_errors(doc: dict[str, Any]) -> None:
    """FastAPI documents a 422 with its own body on every operation with parameters; ours never
    sends it (a validation error is a 400 problem, service/api/problems.py), so it goes, with its schemas."""
    for ops in doc.get("paths", {}).values():
        for op in ops.values():
            response = op.get("responses", {}).get("422", {})
            if "HTTPValidationError" in str(response.get("content", {})):
                del op["responses"]["422"]
    schemas = doc.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _add_models(doc: dict[str, Any], models: Iterable[type[BaseModel]]) -> None:
    _, defs = models_json_schema([(m, "serialization") for m in models], ref_template=REF)
    doc.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))


def api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    """Every APIRoute of an app, also inside included routers (FastAPI 0.16x keeps an included
    router as one entry of ``app.routes`` whose ``original_router`` holds its routes)."""
    for r in routes:
        if isinstance(r, APIRoute):
            yield r
        inner = getattr(r, "original_router", None)
        if inner is not None:
            yield from api_routes(inner.routes)


def _secured(routes: Iterable[Any], dependency: Callable[..., Any]) -> list[tuple[str, str]]:
    """(path, method) of every route that has ``dependency``."""
    found = []
    for r in api_routes(routes):
        if any(d.call is dependency for d in r.dependant.dependencies):
            found += [(r.path, m.lower()) for m in r.methods or ()]
    return found


def _add_bearer(doc: dict[str, Any], operations: list[tuple[str, str]]) -> None:
    doc.setdefault("components", {})["securitySchemes"] = {BEARER: {
        "type": "http", "scheme": "bearer",
        "description": "the server's PSPNET_AUTH_TOKEN, as 'Authorization: Bearer <token>'"}}
    for path, method in operations:
        if method in doc["paths"].get(path, {}):
            doc["paths"][path][method]["security"] = [{BEARER: []}]
