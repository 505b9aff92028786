"""Strict query parameters of POST /v1/segment: unknown, repeated or meaningless ones are named in a 400."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.api.v1.query import COMMON_QUERY, OPTION_QUERY, check_query, query_for
from service.codec.outputs import FORMATS
from service.errors import BadRequest
from tests.service.api_client import png_bytes, serving

PROBLEM = "application/problem+json"


def test_each_output_takes_the_common_parameters_and_its_own_options() -> None:
    assert query_for("color") == query_for("label") == COMMON_QUERY
    assert query_for("overlay") == (*COMMON_QUERY, "format")
    assert query_for("json") == (*COMMON_QUERY, "include_mask")
    # every option parameter sets a field some output reads (else it could never be sent)
    for name, option in OPTION_QUERY.items():
        assert any(option in f.options for f in FORMATS.values()), name


@pytest.mark.parametrize(("names", "output", "named", "allowed"), [
    (["modee"], "color", "'modee'", "mode, flip, scales, output, format (output=overlay), "
                                    "include_mask (output=json)"),
    (["mode", "x", "y"], "json", "'x', 'y'", "mode, flip"),
    (["Mode"], "color", "'Mode'", "mode, flip"),  # names are case-sensitive, as FastAPI reads them
    (["include_mask"], "color", "'include_mask'", "only to output=json"),
    (["format"], "json", "'format'", "with output=json the parameters are mode, flip, scales, output, "
                                     "include_mask"),
    (["format", "include_mask"], "overlay", "'include_mask'", "only to output=json"),
    (["mode", "mode"], "color", "'mode'", "more than once"),
])
def test_a_parameter_that_does_not_belong_is_named_with_what_is_allowed(
        names: list[str], output: str, named: str, allowed: str) -> None:
    with pytest.raises(BadRequest) as err:
        check_query(names, output)
    assert named in err.value.detail and allowed in err.value.detail, err.value.detail


@pytest.mark.parametrize(("names", "output"), [
    ([], "color"),
    (["mode", "flip", "scales", "output"], "label"),
    (["output", "format"], "overlay"),
    (["output", "include_mask", "mode"], "json"),
])
def test_parameters_that_apply_pass(names: list[str], output: str) -> None:
    check_query(names, output)


@pytest.mark.anyio
@pytest.mark.parametrize(("query", "named"), [
    ("?modee=whole", "'modee'"),
    ("?include_mask=true", "'include_mask' does not apply to output=color"),
    ("?output=label&format=png", "'format' does not apply to output=label"),
    ("?output=json&format=jpeg", "'format' does not apply to output=json"),
    ("?output=overlay&include_mask=false", "'include_mask' does not apply to output=overlay"),
    ("?mode=whole&mode=slide", "'mode' given more than once"),
])
async def test_the_api_answers_400_problem_json_naming_the_parameter(model: Path, query: str,
                                                                     named: str) -> None:
    async with serving(model) as c:
        r = await c.post("/v1/segment" + query, content=png_bytes(), headers={"content-type": "image/png"})
    assert r.status_code == 400 and r.headers["content-type"] == PROBLEM, r.text
    assert named in r.json()["detail"]


@pytest.mark.anyio
async def test_every_parameter_works_with_the_output_it_applies_to(model: Path) -> None:
    body = {"content": png_bytes(), "headers": {"content-type": "image/png"}}
    async with serving(model) as c:
        overlay = await c.post("/v1/segment?output=overlay&format=png&mode=whole&flip=true", **body)
        js = await c.post("/v1/segment?output=json&include_mask=false&scales=1.0", **body)
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    assert js.status_code == 200 and "mask" not in js.json()


@pytest.mark.anyio
async def test_the_token_is_checked_before_the_parameters(model: Path) -> None:
    async with serving(model, auth_token="s3cret-token") as c:
        anonymous = await c.post("/v1/segment?modee=whole", content=png_bytes(),
                                 headers={"content-type": "image/png"})
        known = await c.post("/v1/segment?modee=whole", content=png_bytes(),
                             headers={"content-type": "image/png", "authorization": "Bearer s3cret-token"})
    assert anonymous.status_code == 401 and known.status_code == 400


@pytest.mark.anyio
async def test_the_model_listing_takes_no_parameters(model: Path) -> None:
    async with serving(model) as c:
        bad = await c.get("/v1/models?verbose=1")
        one = await c.get("/v1/models/tiny?x=1&x=2")
        fine = await c.get("/v1/models")
    assert bad.status_code == 400 and "'verbose'" in bad.json()["detail"]
    assert "takes none" in bad.json()["detail"]
    assert one.status_code == 400 and "'x'" in one.json()["detail"]
    assert fine.status_code == 200
