"""The demo page and /docs in a real browser: Debian's chromium, driven by Playwright (see browser.py).

Every test blocks and records each request that would leave the server (the page and
the docs must work on a host without internet), and fails on any console error. The
server is the real one (uvicorn) on the shipped CamVid model.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Route, expect, sync_playwright

from tests.service.browser import CAMVID, live_server, require_chromium, street_png

TOKEN = "browser-test-token"
#: Chrome reports every 4xx/5xx answer to fetch() on the console; expected where a test asks for one
FAILED_LOAD = "Failed to load resource: the server responded with a status of"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = require_chromium()
    with sync_playwright() as p:
        # never a browser Playwright downloads: the distribution's, by its path
        b = p.chromium.launch(executable_path=str(executable))
        yield b
        b.close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with live_server(CAMVID) as base:
        yield base


@pytest.fixture(scope="module")
def street(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "street.png"
    path.write_bytes(street_png())
    return path


@dataclass
class Watch:
    """What a page did that it should not: requests to elsewhere, console errors, exceptions."""

    base: str
    outside: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    segment_requests: list[str] = field(default_factory=list)

    def route(self, route: Route) -> None:
        url = route.request.url
        if url.startswith((self.base + "/", "blob:", "data:")):
            route.continue_()
        else:  # a CDN, a font, a validator: blocked, and the test fails on it
            self.outside.append(url)
            route.abort()

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def unexpected_errors(self, *allowed: str) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in allowed)]


def _open(browser: Browser, base: str, **context_args: Any) -> tuple[BrowserContext, Page, Watch]:
    context = browser.new_context(**context_args)
    watch = Watch(base)
    context.route("**/*", watch.route)
    page = context.new_page()
    page.on("console", watch.console)
    page.on("pageerror", lambda e: watch.errors.append(f"exception: {e}"))
    page.on("request", lambda r: watch.segment_requests.append(r.url) if "/v1/segment" in r.url else None)
    return context, page, watch


@pytest.fixture
def opened(browser: Browser, server: str) -> Iterator[tuple[Page, Watch]]:
    context, page, watch = _open(browser, server, viewport={"width": 1100, "height": 900})
    yield page, watch
    context.close()


def _segment_in_page(page: Page, base: str, image: Path) -> None:
    page.goto(base + "/")
    expect(page.locator("#model-line")).to_contain_text("classes")  # /v1/models answered
    page.set_input_files("#file", str(image))
    expect(page.locator("#result")).to_be_visible(timeout=30_000)


def _canvas_rgb(page: Page) -> np.ndarray:
    url = page.evaluate("document.getElementById('output-view').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def test_the_page_segments_a_chosen_image_with_one_request(opened: tuple[Page, Watch], server: str,
                                                           street: Path) -> None:
    page, watch = opened
    _segment_in_page(page, server, street)
    (request,) = watch.segment_requests
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request).query))
    assert query["output"] == "json" and query["include_mask"] == "true"

    # the same request straight to the API: the legend names exactly the classes present
    sent = {k: v for k, v in query.items() if k not in ("output", "include_mask")}

    def direct(output: str) -> httpx.Response:
        return httpx.post(f"{server}/v1/segment", params={**sent, "output": output},
                          content=street.read_bytes(), headers={"content-type": "image/png"}, timeout=60)

    expected = direct("json").json()
    names = page.locator("#legend tbody tr td:nth-child(2)").all_inner_texts()
    assert sorted(names) == sorted(c["name"] for c in expected["classes"]) and len(names) >= 2
    biggest = max(expected["classes"], key=lambda c: c["fraction"])
    first_row = page.locator("#legend tbody tr").first.inner_text()
    assert biggest["name"] in first_row and f"{biggest['fraction'] * 100:.1f} %" in first_row

    # at full opacity the result is the model's colour mask, pixel for pixel, as the server draws it
    page.locator("#opacity").fill("100")
    color = np.asarray(Image.open(io.BytesIO(direct("color").content)).convert("RGB"))
    assert np.array_equal(_canvas_rgb(page), color)
    page.locator("#opacity").fill("30")
    assert not np.array_equal(_canvas_rgb(page), color)
    assert len(watch.segment_requests) == 1, "the slider blends in the page, with no new request"

    assert page.locator("#input-view").evaluate("img => img.complete && img.naturalWidth") == 480
    stages = set(page.locator("#timings tbody td:first-child").all_inner_texts())
    assert {"decode", "plan", "batch", "stitch", "encode", "round trip"} <= stages
    assert watch.outside == [] and watch.errors == []


def test_an_image_dropped_on_the_zone_is_segmented(opened: tuple[Page, Watch], server: str,
                                                   street: Path) -> None:
    page, watch = opened
    page.goto(server + "/")
    expect(page.locator("#model-line")).to_contain_text("classes")
    transfer = page.evaluate_handle("""b64 => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "street.png", {type: "image/png"}));
        return dt;
    }""", base64.b64encode(street.read_bytes()).decode())
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    expect(page.locator("#drop")).to_have_class("drop over")
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    expect(page.locator("#drop")).to_have_class("drop")
    assert len(watch.segment_requests) == 1 and page.locator("#legend tbody tr").count() >= 2
    assert watch.outside == [] and watch.errors == []


def test_errors_show_the_problem_detail_and_when_to_retry(opened: tuple[Page, Watch], server: str,
                                                          street: Path) -> None:
    page, watch = opened
    _segment_in_page(page, server, street)
    page.locator("#scales").fill("9")
    page.locator("#run").click()
    expect(page.locator("#error")).to_contain_text("Error 400: scale '9' is outside")

    # a real overload is hard to time in a browser: the answer one gives, as service/errors.py writes it
    detail = "The server is at capacity; retry later."
    problem = {"type": "urn:problem-type:pspnet:overloaded", "title": "Overloaded", "status": 503,
               "detail": detail, "instance": "/v1/segment", "request_id": "x"}
    page.route("**/v1/segment*", lambda route: route.fulfill(
        status=503, headers={"Retry-After": "7"}, content_type="application/problem+json",
        body=json.dumps(problem)))
    page.locator("#scales").fill("")
    page.locator("#run").click()
    expect(page.locator("#error")).to_contain_text(f"Error 503: {detail} Retry in 7 s")
    assert watch.outside == [] and watch.unexpected_errors(FAILED_LOAD) == []


def test_a_failed_request_clears_the_previous_result(opened: tuple[Page, Watch], server: str, street: Path,
                                                    tmp_path: Path) -> None:
    """No old mask, legend or timings beside an input that failed: the answer, or the network."""
    page, watch = opened

    def assert_cleared(error: str) -> None:
        expect(page.locator("#error")).to_contain_text(error)
        expect(page.locator("#result")).to_be_hidden()
        assert page.locator("#legend tbody tr").count() == 0
        assert page.locator("#timings tbody tr").count() == 0
        assert page.evaluate("(c => [c.width, c.height])(document.getElementById('output-view'))") == [0, 0]

    _segment_in_page(page, server, street)
    assert page.locator("#legend tbody tr").count() >= 2
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image at all")
    page.set_input_files("#file", str(broken))  # a new input the server refuses (415)
    assert_cleared("Error 415")

    page.set_input_files("#file", str(street))  # a result again, then the network fails
    expect(page.locator("#result")).to_be_visible(timeout=30_000)
    expect(page.locator("#error")).to_be_hidden()
    page.route("**/v1/segment*", lambda route: route.abort())
    page.locator("#run").click()
    assert_cleared("The request failed")
    # the slider (hidden with the result) has nothing to repaint
    page.locator("#opacity").dispatch_event("input")
    assert page.evaluate("document.getElementById('output-view').width") == 0
    assert watch.outside == [] and watch.unexpected_errors(FAILED_LOAD, "net::ERR_FAILED") == []


def test_with_auth_on_the_token_goes_to_session_storage_only(browser: Browser, model: Path,
                                                             street: Path) -> None:
    with live_server(model, auth_token=TOKEN) as base:
        context, page, watch = _open(browser, base)
        page.goto(base + "/")
        expect(page.locator("#auth")).to_be_visible()
        expect(page.locator("#error")).to_contain_text("Error 401: a valid 'Authorization: Bearer <token>'")
        page.locator("#token").fill(TOKEN)
        page.locator("#token").press("Enter")
        expect(page.locator("#model-line")).to_contain_text("tiny")
        expect(page.locator("#error")).to_be_hidden()
        page.set_input_files("#file", str(street))
        expect(page.locator("#result")).to_be_visible(timeout=30_000)
        stored = page.evaluate(
            "[sessionStorage.getItem('pspnet-token'), localStorage.length, document.cookie]")
        assert stored == [TOKEN, 0, ""]
        assert page.locator("#token").input_value() == ""  # not left in the field either
        context.close()
    assert watch.outside == [] and watch.unexpected_errors(f"{FAILED_LOAD} 401") == []


def test_docs_render_with_the_network_blocked(browser: Browser, server: str) -> None:
    context, page, watch = _open(browser, server)
    page.goto(server + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("PSPNet segmentation", timeout=30_000)
    segment = page.locator("#operations-inference-segment")
    expect(segment).to_contain_text("/v1/segment")
    expect(page.locator("#operations-inference-models")).to_contain_text("/v1/models")
    segment.locator(".opblock-summary").click()  # open it: the request body lists every image type
    media = page.locator("#operations-inference-segment .opblock-section-request-body select")
    expect(media).to_contain_text("image/tiff")
    context.close()
    assert watch.outside == [] and watch.errors == []


def test_nothing_overflows_a_375_pixel_wide_screen(browser: Browser, server: str, street: Path) -> None:
    context, page, watch = _open(browser, server, viewport={"width": 375, "height": 740})
    _segment_in_page(page, server, street)
    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    context.close()
    assert widths[0] <= widths[1] == 375, widths
    assert watch.errors == []


def test_every_control_is_reachable_with_tab_and_has_a_name(opened: tuple[Page, Watch], server: str,
                                                            street: Path) -> None:
    page, _ = opened
    _segment_in_page(page, server, street)  # so that the result's controls are there too
    controls = page.evaluate("""() => {
        const all = [...document.querySelectorAll('a[href], button, input, select, textarea, [tabindex]')]
            .filter(el => !el.disabled && el.tabIndex >= 0 && el.getClientRects().length > 0);
        all.forEach((el, i) => el.dataset.control = String(i));
        return all.map(el => el.id || el.tagName);
    }""")
    assert {"file", "mode", "scales", "flip", "run", "opacity"} <= set(controls)
    page.locator("body").focus()
    reached = []
    for _ in range(3 * len(controls)):
        page.keyboard.press("Tab")
        index = page.evaluate("document.activeElement ? document.activeElement.dataset.control : undefined")
        if index is not None and controls[int(index)] not in reached:
            reached.append(controls[int(index)])
    assert sorted(reached) == sorted(controls)

    # names as the browser's accessibility tree computes them (what a screen reader announces)
    cdp = page.context.new_cdp_session(page)
    nodes = cdp.send("Accessibility.getFullAXTree")["nodes"]
    focusable = [n for n in nodes if not n.get("ignored") and any(
        p["name"] == "focusable" and p["value"].get("value") for p in n.get("properties", []))
        and n["role"]["value"] != "RootWebArea"]
    assert len(focusable) >= len(controls)
    unnamed = [n["role"]["value"] for n in focusable if not n.get("name", {}).get("value", "").strip()]
    assert unnamed == []


def test_a_model_picker_when_the_server_lists_several(opened: tuple[Page, Watch], server: str) -> None:
    page, watch = opened
    real = httpx.get(server + "/v1/models", timeout=30).json()["models"][0]
    other = {**real, "name": "second-model", "protocol": {**real["protocol"], "mode": "whole"}}
    page.route("**/v1/models", lambda route: route.fulfill(json={"models": [real, other]}))
    page.goto(server + "/")
    picker = page.locator("#model")
    expect(page.locator("#model-picker")).to_be_visible()
    expect(picker.locator("option")).to_have_count(2)
    assert page.locator("#model-picker").is_visible() and page.locator("#mode").input_value() == "slide"
    picker.select_option(label="second-model (camvid)")
    expect(page.locator("#model-line")).to_contain_text("second-model")
    assert page.locator("#mode").input_value() == "whole" and page.locator("#scales").is_disabled()
    assert watch.outside == [] and watch.errors == []
