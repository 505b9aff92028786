"""The browser surface: the demo page at ``/`` and the API docs at ``/docs``, both offline.

Everything a browser loads comes from this server. The page is three static files
shipped as package data (service/api/web/: no framework, no build step); Swagger UI comes
from the swagger-ui-bundle-v2 package, Swagger UI's own release files (Apache-2.0, the
licence installed beside them). Nothing is fetched from a CDN, so both pages work on a
host without internet.

Caching: the two HTML pages are revalidated on every load (``no-cache`` with an ETag,
so mostly a 304), and name their scripts and styles with a digest of the content
(``app.js?v=...``); those URLs are cached for a year, since a new release changes the
URL. A request without the current digest (an old page, a hand-typed URL) still gets
the file, revalidated like a page.

Content-Security-Policy on the pages: scripts, styles and requests only to this origin;
no inline script, no eval, no inline style attribute; images from this origin or made
in the page (``blob:``, ``data:``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib.resources import files
from importlib.resources.abc import Traversable

import swagger_ui_bundle
from fastapi import APIRouter, Request
from fastapi.responses import Response

CSP = "; ".join([
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' blob: data:",
    "connect-src 'self'", "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
])
PAGE_HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".png": "image/png"}
#: URL -> file name: the page's own files (service/api/web/) and the Swagger UI files /docs needs
PAGE_ASSETS = {"/web/app.js": "app.js", "/web/style.css": "style.css", "/web/docs.js": "docs.js"}
SWAGGER_ASSETS = {"/docs/swagger-ui-bundle.js": "swagger-ui-bundle.js",
                  "/docs/swagger-ui.css": "swagger-ui.css", "/docs/favicon-32x32.png": "favicon-32x32.png"}
PAGES = {"/": "index.html", "/docs": "docs.html"}
SWAGGER_DIR: Traversable = swagger_ui_bundle.swagger_ui_path
SWAGGER_UI_VERSION = SWAGGER_DIR.name.removeprefix("swagger-ui-")


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)

    @cached_property
    def version(self) -> str:
        return hashlib.sha256(self.body).hexdigest()[:16]

    @cached_property
    def etag(self) -> str:
        return f'"{self.version}"'

    def respond(self, request: Request, *, page: bool) -> Response:
        # a URL with the current digest can never change; anything else is checked each time
        fresh = not page and request.query_params.get("v") == self.version
        headers = {**self.headers, "ETag": self.etag, "X-Content-Type-Options": "nosniff",
                   "Cache-Control": IMMUTABLE if fresh else REVALIDATE}
        if _matches(request.headers.get("if-none-match"), self.etag):
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _asset(folder: Traversable, name: str, **headers: str) -> Asset:
    suffix = name[name.rindex("."):]
    return Asset(folder.joinpath(name).read_bytes(), MEDIA_TYPES[suffix], headers)


@cache
def site() -> dict[str, tuple[Asset, bool]]:
    """URL -> (asset, is a page); read once per process, shared by every app."""
    own = files("service.api").joinpath("web")
    assets = {url: _asset(own, name) for url, name in PAGE_ASSETS.items()}
    assets |= {url: _asset(SWAGGER_DIR, name) for url, name in SWAGGER_ASSETS.items()}
    out: dict[str, tuple[Asset, bool]] = {url: (a, False) for url, a in assets.items()}
    for url, name in PAGES.items():
        html = own.joinpath(name).read_text("utf-8")
        for asset_url, a in assets.items():
            # the pages name their files relative to the site root ("web/app.js"), so that
            # they also work under a path prefix; the digest is added here, not by hand
            relative = asset_url.lstrip("/")
            html = html.replace(f'"{relative}"', f'"{relative}?v={a.version}"')
        out[url] = (Asset(html.encode(), MEDIA_TYPES[".html"], dict(PAGE_HEADERS)), True)
    return out


def _handler(asset: Asset, page: bool) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        return asset.respond(request, page=page)

    return serve


def router() -> APIRouter:
    """GET routes for the pages and their files, left out of the OpenAPI document."""
    r = APIRouter(include_in_schema=False)
    for url, (asset, page) in site().items():
        r.add_api_route(url, _handler(asset, page), methods=["GET"], name=f"web:{url}")
    return r
