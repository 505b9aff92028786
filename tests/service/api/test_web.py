"""The demo page and /docs over HTTP (no browser): what is served, its headers, its caching, its packaging.

The browser itself is in test_web_browser.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from service.api import web
from tests.service.api_client import metric_samples, serving

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[3]
PAGE_FILES = ("index.html", "app.js", "style.css", "docs.html", "docs.js")


class Markup(HTMLParser):
    """Every tag with its attributes, and the text of <script> and <style> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open = tag if tag in ("script", "style") else None

    def handle_data(self, data: str) -> None:
        if self._open and data.strip():
            self.inline.append(f"<{self._open}>{data.strip()[:60]}")

    def handle_endtag(self, tag: str) -> None:
        self._open = None


def _parse(html: str) -> Markup:
    m = Markup()
    m.feed(html)
    return m


@pytest.mark.parametrize("path", ["/", "/docs"])
async def test_pages_carry_a_policy_without_inline_code_and_obey_it(model: Path, path: str) -> None:
    async with serving(model) as c:
        r = await c.get(path)
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    policy = dict(d.strip().split(" ", 1) for d in r.headers["content-security-policy"].split(";"))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'" and policy["connect-src"] == "'self'"
    assert "unsafe" not in r.headers["content-security-policy"]
    page = _parse(r.text)
    assert page.inline == [], "inline <script> or <style>: the policy would block it"
    for tag, attrs in page.tags:
        handlers = [a for a in attrs if a.startswith("on")]
        assert not handlers and "style" not in attrs, (tag, attrs)
        for name in ("src", "href"):
            url = attrs.get(name)
            # relative to this server (so a path prefix works too) or made in place: nothing remote
            if url is not None:
                assert not re.match(r"^(\w+:)?//", url) and not url.startswith("/"), url
                assert ":" not in url or url.startswith("data:"), url


async def test_every_file_a_page_names_is_served_at_its_digest_and_cached(model: Path) -> None:
    async with serving(model) as c:
        named = []
        for page in ("/", "/docs"):
            for tag, attrs in _parse((await c.get(page)).text).tags:
                url = attrs.get("src") or (attrs.get("href") if tag == "link" else None)
                if url and not url.startswith("data:"):
                    named.append(url)
        versioned = {u for u in named if "?v=" in u}
        assert {u.split("?")[0] for u in versioned} == {p.lstrip("/") for p in web.PAGE_ASSETS} | {
            p.lstrip("/") for p in web.SWAGGER_ASSETS}
        for url in versioned:
            r = await c.get("/" + url)
            path, digest = url.split("?v=")
            assert r.status_code == 200 and r.headers["cache-control"] == web.IMMUTABLE, url
            assert r.headers["etag"] == f'"{digest}"' and r.headers["x-content-type-options"] == "nosniff"
            stale = await c.get("/" + path + "?v=old")
            assert stale.status_code == 200 and stale.headers["cache-control"] == "no-cache"
            again = await c.get("/" + url, headers={"if-none-match": r.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
        page = await c.get("/")
        assert page.headers["cache-control"] == "no-cache"
        weak_among_others = f'W/{page.headers["etag"]}, "x"'
        assert (await c.get("/", headers={"if-none-match": weak_among_others})).status_code == 304
        assert (await c.get("/", headers={"if-none-match": '"something-else"'})).status_code == 200


async def test_docs_come_from_the_installed_swagger_ui(model: Path) -> None:
    async with serving(model) as c:
        bundle = await c.get("/docs/swagger-ui-bundle.js")
        css = await c.get("/docs/swagger-ui.css")
        init = await c.get("/web/docs.js")
        redoc = await c.get("/redoc")
    assert bundle.headers["content-type"] == "text/javascript; charset=utf-8"
    assert len(bundle.content) > 500_000
    assert bundle.content == web.SWAGGER_DIR.joinpath("swagger-ui-bundle.js").read_bytes()
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    assert b"SwaggerUIBundle" in init.content and b"validatorUrl: null" in init.content
    # Swagger UI reads OpenAPI 3.1 (FastAPI's) from version 5 on; 4.x shows an error instead
    assert int(web.SWAGGER_UI_VERSION.split(".")[0]) >= 5, web.SWAGGER_UI_VERSION
    assert redoc.status_code == 404  # removed: it would need a CDN


async def test_page_routes_get_their_own_metric_labels(model: Path) -> None:
    async with serving(model) as c:
        await c.get("/")
        await c.get("/web/app.js")
        await c.get("/docs")
        missing = await c.get("/web/secret.py")
        text = (await c.get("/metrics")).text
    samples = metric_samples(text, "pspnet_requests_total")
    for route in ("/", "/web/app.js", "/docs"):
        assert f'{{method="GET",model="",route="{route}",status="200"}}' in samples, route
    assert missing.status_code == 404 and "/web/secret.py" not in text


def test_the_page_files_are_package_data_of_a_plain_build(tmp_path: Path) -> None:
    """A wheel built from the project (not an editable install) carries every file the pages serve."""
    src = tmp_path / "project"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "weights", "tests", "docs", "benchmarks", "build", "dist", "*.egg-info",
        "__pycache__", ".*_cache", "runs", "out", "bench-results"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--quiet", str(src), "-w", str(tmp_path / "dist")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in PAGE_FILES:
        assert f"service/api/web/{name}" in names, name
