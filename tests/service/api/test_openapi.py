"""The OpenAPI document: real responses validate against it, and a client generated from it works."""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from service.api import openapi
from service.api.app import create_app
from service.api.v1.query import COMMON_QUERY, OPTION_QUERY
from service.codec.encode import ClassShare
from service.codec.sniff import IMAGE_FORMATS
from service.errors import PROBLEM_MEDIA_TYPE
from service.settings import Settings
from tests.service.api_client import png_bytes, serving
from tests.service.browser import live_server

TOKEN = "generated-client-token"


def _schema(model: Path, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = create_app(Settings(model=model, **overrides)).openapi()
    return doc


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    # refs resolve against the whole document, as a client generator resolves them
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


def test_the_request_body_lists_every_image_type_the_decoder_reads(model: Path) -> None:
    body = _schema(model)["paths"]["/v1/segment"]["post"]["requestBody"]["content"]
    image_types = {t for t in body if t.startswith("image/")}
    assert image_types == {f"image/{f.lower()}" for f in IMAGE_FORMATS}
    assert {"image/bmp", "image/tiff", "image/gif"} <= image_types
    assert {"multipart/form-data", "application/octet-stream"} <= set(body)


def test_the_query_parameters_are_the_ones_the_strict_check_knows(model: Path) -> None:
    params = _schema(model)["paths"]["/v1/segment"]["post"]["parameters"]
    assert [p["name"] for p in params] == [*COMMON_QUERY, *OPTION_QUERY]
    # a default on an option would make generated clients send it with every output: a 400
    for p in params:
        if p["name"] in OPTION_QUERY:
            assert not [s for s in [p["schema"], *p["schema"].get("anyOf", [])] if "default" in s], p


def test_every_error_is_problem_json_with_its_schema(model: Path) -> None:
    doc = _schema(model)
    seen = set()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if int(status) < 400:
                    continue
                seen.add(int(status))
                if path.startswith("/v2"):  # the Open Inference Protocol's own error shape
                    assert list(response["content"]) == ["application/json"], (path, method, status)
                    schema = response["content"]["application/json"]["schema"]
                    assert schema["required"] == ["error"], (path, method, status)
                    continue
                assert list(response["content"]) == [PROBLEM_MEDIA_TYPE], (path, method, status)
                schema = response["content"][PROBLEM_MEDIA_TYPE]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problem"}
    assert seen == {400, 401, 404, 413, 415, 422, 503, 504}
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # FastAPI's 422 body: never sent
    segment = doc["paths"]["/v1/segment"]["post"]["responses"]
    json_200 = segment["200"]["content"]["application/json"]["schema"]
    assert json_200 == {"$ref": "#/components/schemas/Segmentation"}
    assert segment["503"]["headers"]["Retry-After"]["required"] is True


def test_the_bearer_scheme_is_there_only_with_a_token_and_only_on_v1(model: Path) -> None:
    open_doc = _schema(model)
    locked = _schema(model, auth_token=TOKEN)
    assert "securitySchemes" not in open_doc["components"]
    assert all("security" not in op for ops in open_doc["paths"].values() for op in ops.values())
    assert locked["components"]["securitySchemes"] == {"bearerAuth": {
        "type": "http", "scheme": "bearer", "description": locked["components"]["securitySchemes"][
            "bearerAuth"]["description"]}}
    secured = {p for p, ops in locked["paths"].items() for op in ops.values() if "security" in op}
    # the model routes need the token; probes, metrics, docs and /v2's server routes stay open
    assert secured == {p for p in locked["paths"] if p.startswith(("/v1/", "/v2/models", "/v2/repository"))}
    assert {"/v1/segment", "/v1/models", "/v1/admin/reload", "/v2/models/{name}/infer",
            "/v2/repository/index"} <= secured
    assert "/v1/admin/reload" not in open_doc["paths"]  # the reload route exists only with a token


def test_the_browser_pages_stay_out_of_the_document(model: Path) -> None:
    paths = set(_schema(model)["paths"])
    assert not {"/", "/docs", "/web/app.js"} & paths
    assert {"/healthz", "/readyz", "/metrics", "/v1/models", "/v1/segment", "/v2"} <= paths


def test_class_share_is_the_one_the_json_output_is_built_of(model: Path) -> None:
    """``ClassShare`` is defined once (service/codec/encode.py, what ``class_summary`` returns) and
    the OpenAPI document keeps its component name and schema exactly."""
    assert openapi.Segmentation.model_fields["classes"].annotation == list[ClassShare]
    schemas = _schema(model)["components"]["schemas"]
    classes = schemas["Segmentation"]["properties"]["classes"]
    assert classes["items"] == {"$ref": "#/components/schemas/ClassShare"}
    assert schemas["ClassShare"] == {
        "description": "A class present in the image and the share of pixels it covers.",
        "properties": {
            "id": {"title": "Id", "type": "integer"},
            "name": {"title": "Name", "type": "string"},
            "color": {"description": "red, green, blue (0-255)", "items": {"type": "integer"},
                      "maxItems": 3, "minItems": 3, "title": "Color", "type": "array"},
            "pixels": {"title": "Pixels", "type": "integer"},
            "fraction": {"description": "of all pixels", "maximum": 1, "minimum": 0, "title": "Fraction",
                         "type": "number"},
        },
        "required": ["id", "name", "color", "pixels", "fraction"],
        "title": "ClassShare",
        "type": "object",
    }


@pytest.mark.anyio
async def test_real_responses_validate_against_the_document(model: Path) -> None:
    doc = _schema(model)
    ops = doc["paths"]

    def schema_of(path: str, method: str, status: int, media: str) -> dict[str, Any]:
        s: dict[str, Any] = ops[path][method]["responses"][str(status)]["content"][media]["schema"]
        return s

    png = {"content-type": "image/png"}
    async with serving(model, max_pixels=30_000) as c:
        models = await c.get("/v1/models")
        ready = await c.get("/readyz")
        js = await c.post("/v1/segment?output=json&include_mask=true", content=png_bytes(), headers=png)
        bad = await c.post("/v1/segment?modee=whole", content=png_bytes(), headers=png)
        big = await c.post("/v1/segment", content=png_bytes(200, 200), headers=png)
    checks = [(models, "/v1/models", "get", "application/json"),
              (ready, "/readyz", "get", "application/json"),
              (js, "/v1/segment", "post", "application/json"),
              (bad, "/v1/segment", "post", PROBLEM_MEDIA_TYPE),
              (big, "/v1/segment", "post", PROBLEM_MEDIA_TYPE)]
    for response, path, method, media in checks:
        assert response.headers["content-type"].split(";")[0] == media
        _validator(doc, schema_of(path, method, response.status_code, media)).validate(response.json())
    # and a wrong shape does not validate: the schemas say something
    broken = {**js.json(), "classes": [{"id": "zero"}]}
    assert not _validator(doc, schema_of("/v1/segment", "post", 200, "application/json")).is_valid(broken)


def _generate(doc: dict[str, Any], where: Path, package: str) -> None:
    """openapi-python-client, the CLI installed with the dev extra, into ``where/package``."""
    spec, config = where / "openapi.json", where / "config.yaml"
    spec.write_text(json.dumps(doc))
    # no post hooks: formatting the generated code is not what is tested, and it takes time
    config.write_text(f"post_hooks: []\npackage_name_override: {package}\nproject_name_override: {package}\n")
    cli = Path(sys.executable).parent / "openapi-python-client"
    done = subprocess.run([str(cli), "generate", "--path", str(spec), "--config", str(config),
                           "--meta", "none", "--output-path", str(where / package)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    # it cannot write a body for image/* other than as octet-stream, and says so; nothing else may go
    warnings = [line for line in done.stdout.splitlines() if line.startswith("WARNING")]
    assert all("POST /v1/segment" in w for w in warnings), done.stdout


def test_a_client_generated_from_the_document_segments_an_image(
        model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = "pspnet_generated_client"
    _generate(_schema(model, auth_token=TOKEN), tmp_path, package)
    monkeypatch.syspath_prepend(str(tmp_path))
    client_mod = importlib.import_module(package)
    segment = importlib.import_module(f"{package}.api.inference.segment")
    list_models = importlib.import_module(f"{package}.api.inference.models")
    m = importlib.import_module(f"{package}.models")
    types = importlib.import_module(f"{package}.types")
    image = png_bytes(40, 60)

    def file() -> Any:
        return types.File(payload=io.BytesIO(image), file_name="x.png", mime_type="image/png")

    # over real HTTP: the generated sync client, a real server with the token set
    with live_server(model, auth_token=TOKEN) as base:
        client = client_mod.AuthenticatedClient(base_url=base, token=TOKEN)
        anonymous = client_mod.Client(base_url=base)
        listed = list_models.sync(client=client)
        raw = segment.sync(client=client, body=file(), output=m.SegmentOutput.JSON, include_mask=True,
                           mode=m.SegmentModeType0.WHOLE)
        form = segment.sync(client=client, body=m.SegmentFilesBody(image=file()), output=m.SegmentOutput.JSON)
        refused = segment.sync(client=anonymous, body=file(), output=m.SegmentOutput.JSON)
        misplaced = segment.sync(client=client, body=file(), output=m.SegmentOutput.JSON,
                                 format_=m.SegmentFormatType0.PNG)

    assert isinstance(listed, m.ModelsResponse) and listed.models[0].name == "tiny"
    assert len(listed.models[0].classes) == 5
    assert isinstance(raw, m.Segmentation) and (raw.width, raw.height) == (60, 40)
    assert sum(c.pixels for c in raw.classes) == 40 * 60 and isinstance(raw.mask, str)
    assert isinstance(form, m.Segmentation) and sum(c.pixels for c in form.classes) == 40 * 60
    assert isinstance(refused, m.Problem) and refused.status == 401
    assert isinstance(misplaced, m.Problem) and misplaced.status == 400 and "'format'" in misplaced.detail
