"""Every hostile upload of hostile_images.py through HTTP, and the bearer-token rules (issue #7).

test_decode.py proves the decoder; this proves what a client sees: the right
status (200 with a mask of the right size, or the problem+json error), fast,
and with bounded memory: decompression bombs must not allocate their canvas
anywhere in the request path. Memory is the process's peak RSS (VmHWM, reset
through /proc/self/clear_refs before each group), so Pillow's and OpenCV's C
allocations count too, not just Python's.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.settings import Settings
from tests.service import hostile_images as hi
from tests.service.api_client import png_bytes, serving

pytestmark = pytest.mark.anyio
PROBLEM = "application/problem+json"
MB = 1 << 20
#: Wall seconds for one refused upload. Measured: at most 3 ms per refusal (bombs included) on the
#: 2-core machine; 1 s leaves room for a busy CI host, and a bomb that allocated its canvas
#: (432 MB to fill at 12000 x 12000) would still take longer.
REFUSAL_SECONDS = 1.0
#: Peak RSS growth over a group of uploads. Measured: bombs 0.1 MB, broken files 0.3 MB, the
#: accepted oddities 1.1 MB (tiny images, tiny model); one 12000 x 12000 greyscale canvas would be
#: 137 MB. The instrument does see real allocations: one 4000 x 3000 PNG through the same path
#: raised the peak by 595 MB.
PEAK_RSS_BOUND = 48 * MB


@dataclass(frozen=True)
class Upload:
    body: bytes
    ctype: str | None = "image/png"
    status: int = 200
    size: tuple[int, int] | None = None  # (width, height) of the mask, for a 200
    multipart: bool = False


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss() -> int:
    """Reset VmHWM to the current RSS (Linux >= 4.0) and return that RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs)")
    return _vm("VmRSS")


async def send(c: httpx.AsyncClient, up: Upload, query: str = "") -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    if up.multipart:
        files = {"image": ("upload", up.body, up.ctype)} if up.ctype else {"image": ("upload", up.body)}
        r = await c.post("/v1/segment" + query, files=files)
    else:
        headers = {"content-type": up.ctype} if up.ctype else {}
        r = await c.post("/v1/segment" + query, content=up.body, headers=headers)
    return r, time.perf_counter() - t0


def check(name: str, up: Upload, r: httpx.Response, seconds: float) -> list[str]:
    """What is wrong with ``r`` for ``up``, as messages (empty when right)."""
    wrong = []
    if r.status_code != up.status:
        wrong.append(f"{name}: {r.status_code} instead of {up.status}: {r.text[:200]}")
    elif up.status == 200:
        with Image.open(io.BytesIO(r.content)) as mask:
            if up.size is not None and mask.size != up.size:
                wrong.append(f"{name}: mask {mask.size} instead of {up.size}")
    else:
        if r.headers["content-type"] != PROBLEM or r.json()["status"] != up.status:
            wrong.append(f"{name}: not a problem+json {up.status}: {r.headers['content-type']}")
        if seconds > REFUSAL_SECONDS:
            wrong.append(f"{name}: refused after {seconds:.3f} s")
    return wrong


async def run_group(model: Path, uploads: dict[str, Upload], query: str = "?mode=whole",
                    **overrides: object) -> tuple[dict[str, float], int]:
    """POST each upload; fail listing every wrong answer. Returns seconds per upload and peak RSS growth."""
    wrong: list[str] = []
    seconds: dict[str, float] = {}
    async with serving(model, **overrides) as c:
        await send(c, Upload(png_bytes()), query)  # first-request costs out of the measurement
        base = reset_peak_rss()
        for name, up in uploads.items():
            r, seconds[name] = await send(c, up, query)
            wrong += check(name, up, r, seconds[name])
        growth = _vm("VmHWM") - base
    assert not wrong, "\n".join(wrong)
    return seconds, growth


# -- the uploads -------------------------------------------------------------------------------------

_IM = Image.fromarray(hi.pattern(48, 64))  # 64 x 48
_FRAMES = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def _truncated(fmt: str, **params: object) -> bytes:
    data = hi.encode(_IM, fmt, **params)
    return data[: len(data) // 2]


def _corrupt_scan(data: bytes) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, len(data) - len(data) // 4, dtype=np.uint8)
    return data[: len(data) // 4] + noise.tobytes()


_SMALL = Image.fromarray(hi.pattern(8, 8))
BOMBS: dict[str, Callable[[int, int], bytes]] = {
    "png": hi.png_bomb,
    "gif-screen": lambda w, h: hi.gif_bomb((w, h), (0, 0, 1, 1)),
    "gif-first-frame": lambda w, h: hi.gif_bomb((1, 1), (0, 0, w, h)),
    "webp-lossless": hi.webp_vp8l_bomb,
    "webp-extended": hi.webp_vp8x_bomb,
    "jpeg": lambda w, h: hi.jpeg_with_size(hi.encode(_SMALL, "JPEG"), w, h),
    "bmp": lambda w, h: hi.bmp_with_size(hi.encode(_SMALL, "BMP"), w, h),
    "tiff": lambda w, h: hi.tiff_with_size(hi.encode(_SMALL, "TIFF"), w, h),
}


def bomb_uploads() -> dict[str, Upload]:
    out = {}
    for name, make in BOMBS.items():
        # 12000^2 = 144 Mpx is under Pillow's own error threshold (it would only warn); WebP tops
        # out at 16384
        sizes = [(12000, 12000), (16384, 16384)] if name.startswith("webp") else [(12000, 12000),
                                                                                  (60000, 60000)]
        for w, h in sizes:
            out[f"bomb-{name}-{w}x{h}"] = Upload(make(w, h), "image/png", 413)
    return out


def broken_uploads() -> dict[str, Upload]:
    png = hi.encode(_IM, "PNG")
    webp = hi.encode(_IM, "WEBP", lossless=True)
    out = {f"truncated-{fmt.lower()}{'-' + '-'.join(p) if p else ''}": Upload(_truncated(fmt, **p), None, 422)
           for fmt, p in [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}), ("WEBP", {}),
                          ("WEBP", {"lossless": True}), ("GIF", {})]}
    out |= {
        "corrupt-png-ihdr-crc": Upload(png[:16] + b"\x00\x01" + png[18:], "image/png", 422),
        "corrupt-jpeg-scan": Upload(_corrupt_scan(hi.encode(_IM, "JPEG")), "image/jpeg", 422),
        "corrupt-webp-chunk": Upload(webp[:12] + b"XXXX" + webp[16:], "image/webp", 422),
        "png-zero-size": Upload(hi.raw_png(0, 10, 8, 0, b""), "image/png", 422),
        "signature-only": Upload(b"\x89PNG\r\n\x1a\n", "image/png", 422),
        "empty": Upload(b"", "image/png", 400),
        "empty-multipart": Upload(b"", "image/png", 400, multipart=True),
    }
    out |= {f"not-an-image-{k}": Upload(v, "image/png", 415) for k, v in hi.NON_IMAGES.items()}
    out |= {f"not-an-image-{k}-untyped": Upload(v, None, 415) for k, v in hi.NON_IMAGES.items()}
    return out


def odd_but_valid_uploads() -> dict[str, Upload]:
    """Images a client may well send: each gets a mask the size of the (oriented) image."""
    grey16 = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 21)
    index = (np.arange(48 * 64).reshape(48, 64) % 4).astype(np.uint8)
    pal = Image.fromarray(index)
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    pal.info["transparency"] = bytes([0, 128, 255, 255])
    out = {f"1x1-{fmt.lower()}": Upload(hi.encode(Image.new("RGB", (1, 1), (200, 100, 50)), fmt), None,
                                        200, (1, 1))
           for fmt in ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]}
    out |= {
        "1x40-png": Upload(hi.encode(Image.new("RGB", (40, 1), (9, 9, 9)), "PNG"), None, 200, (40, 1)),
        # whole mode resizes into one tile whatever the aspect ratio
        "1x4000-png": Upload(hi.encode(Image.new("RGB", (4000, 1), (9, 9, 9)), "PNG"), None, 200, (4000, 1)),
        "animated-gif": Upload(hi.animated("GIF", _FRAMES), "image/gif", 200, (8, 6)),
        "apng": Upload(hi.animated("PNG", _FRAMES), "image/png", 200, (8, 6)),
        "animated-webp": Upload(hi.animated("WEBP", _FRAMES, lossless=True), "image/webp", 200, (8, 6)),
        "grey16-png": Upload(hi.encode(Image.fromarray(grey16), "PNG"), "image/png", 200, (64, 48)),
        "rgb16-png": Upload(hi.png16_rgb(hi.pattern(48, 64).astype(np.uint16) * 257), None, 200, (64, 48)),
        "cmyk-jpeg": Upload(hi.encode(_IM.convert("CMYK"), "JPEG"), "image/jpeg", 200, (64, 48)),
        "rgba-png": Upload(hi.encode(_IM.convert("RGBA"), "PNG"), "image/png", 200, (64, 48)),
        "la-png": Upload(hi.encode(_IM.convert("LA"), "PNG"), "image/png", 200, (64, 48)),
        "palette-trns-png": Upload(hi.encode(pal, "PNG"), "image/png", 200, (64, 48)),
        "grey-jpeg": Upload(hi.encode(_IM.convert("L"), "JPEG"), "image/jpeg", 200, (64, 48)),
        "bilevel-png": Upload(hi.encode(_IM.convert("1"), "PNG"), "image/png", 200, (64, 48)),
        "rgba-webp": Upload(hi.encode(_IM.convert("RGBA"), "WEBP"), "image/webp", 200, (64, 48)),
    }
    for o in range(1, 9):
        # 5..8 swap the axes: the mask has the size the viewer shows, not the stored one
        size = (48, 64) if o >= 5 else (64, 48)
        out[f"exif-{o}-jpeg"] = Upload(hi.with_exif_orientation(_IM, "JPEG", o), "image/jpeg", 200, size)
        out[f"exif-{o}-png"] = Upload(hi.with_exif_orientation(_IM, "PNG", o), "image/png", 200, size)
    return out


def content_type_uploads() -> dict[str, Upload]:
    png, jpeg = hi.encode(_IM, "PNG"), hi.encode(_IM, "JPEG")
    return {
        "jpeg-declared-png": Upload(jpeg, "image/png", 200, (64, 48)),
        "png-declared-jpeg": Upload(png, "image/jpeg", 200, (64, 48)),
        "png-untyped": Upload(png, None, 200, (64, 48)),
        "png-octet-stream": Upload(png, "application/octet-stream", 200, (64, 48)),
        "png-with-parameters": Upload(png, "IMAGE/PNG; charset=binary", 200, (64, 48)),
        "png-as-text": Upload(png, "text/plain", 415),
        "png-as-json": Upload(png, "application/json", 415),
        "png-as-form": Upload(png, "application/x-www-form-urlencoded", 415),
        "multipart-png": Upload(png, "image/png", 200, (64, 48), multipart=True),
        "multipart-untyped-part": Upload(png, None, 200, (64, 48), multipart=True),
        "multipart-part-as-text": Upload(png, "text/plain", 415, multipart=True),
        "multipart-not-an-image": Upload(hi.NON_IMAGES["pdf"], "application/octet-stream", 415,
                                         multipart=True),
    }


# -- the tests ---------------------------------------------------------------------------------------

async def test_bombs_are_413_at_once_without_allocating(model: Path) -> None:
    seconds, growth = await run_group(model, bomb_uploads(), max_pixels=40_000_000)
    assert growth < PEAK_RSS_BOUND, f"peak RSS grew {growth / MB:.1f} MB"
    assert max(seconds.values()) < REFUSAL_SECONDS


async def test_truncated_corrupt_empty_and_non_images(model: Path) -> None:
    _, growth = await run_group(model, broken_uploads())
    assert growth < PEAK_RSS_BOUND, f"peak RSS grew {growth / MB:.1f} MB"


async def test_odd_but_valid_images_get_a_mask_of_their_size(model: Path) -> None:
    _, growth = await run_group(model, odd_but_valid_uploads())
    assert growth < PEAK_RSS_BOUND, f"peak RSS grew {growth / MB:.1f} MB"


async def test_odd_images_through_every_mode(model: Path) -> None:
    """The sliding and multi-scale paths with flip, on the shapes most likely to trip the tiler."""
    ups = {k: v for k, v in odd_but_valid_uploads().items()
           if k in ("1x1-png", "1x40-png", "exif-6-jpeg", "rgb16-png", "apng")}
    await run_group(model, ups, query="?mode=slide&flip=true")
    await run_group(model, ups, query="?mode=multiscale&flip=true")


@pytest.mark.parametrize("mode", ["slide", "multiscale"])
async def test_a_strip_too_thin_for_its_scales_is_400(model: Path, mode: str) -> None:
    # the tiny model's base size is 48: a 4000 x 1 strip is 48 x 0.012 px at scale 1 (whole mode,
    # which resizes into one tile whatever the shape, serves it: see odd_but_valid_uploads)
    async with serving(model) as c:
        r = await c.post(f"/v1/segment?mode={mode}", content=hi.encode(Image.new("RGB", (4000, 1)), "PNG"),
                         headers={"content-type": "image/png"})
    assert r.status_code == 400 and r.headers["content-type"] == PROBLEM, r.text
    assert "mode=whole serves images of any shape" in r.json()["detail"], "the refusal says what serves it"


async def test_a_thin_strip_is_400_in_the_default_mode_and_200_with_mode_whole(model: Path) -> None:
    """The tiny model's default is slide, as for every shipped and converted model (RELIABILITY.md)."""
    strip = hi.encode(Image.new("RGB", (4000, 1), (9, 9, 9)), "PNG")
    headers = {"content-type": "image/png"}
    async with serving(model) as c:
        default = await c.post("/v1/segment", content=strip, headers=headers)
        whole = await c.post("/v1/segment?mode=whole", content=strip, headers=headers)
        v2 = await c.post("/v2/models/tiny/infer", json={"inputs": [
            {"name": "pixels", "datatype": "UINT8", "shape": [1, 4000, 3], "data": [9] * 12000}]})
    assert default.status_code == 400 and "mode=whole" in default.json()["detail"], default.text
    assert whole.status_code == 200 and whole.headers["x-pspnet-mode"] == "whole"
    with Image.open(io.BytesIO(whole.content)) as mask:
        assert mask.size == (4000, 1)
    assert v2.status_code == 400 and "mode=whole" in v2.json()["error"], v2.text


async def test_declared_content_types(model: Path) -> None:
    await run_group(model, content_type_uploads())


async def test_malformed_multipart_is_400(model: Path) -> None:
    png = png_bytes()
    async with serving(model) as c:
        answers = {
            "no image field": await c.post("/v1/segment", files={"picture": ("x.png", png, "image/png")}),
            "image is text": await c.post("/v1/segment", data={"image": "not a file"},
                                          files={"other": ("x.txt", b"x", "text/plain")}),
            "two files": await c.post("/v1/segment", files=[("image", ("a.png", png, "image/png")),
                                                            ("image", ("b.png", png, "image/png"))]),
            "image and another file": await c.post("/v1/segment", files=[
                ("image", ("a.png", png, "image/png")), ("mask", ("b.png", png, "image/png"))]),
            "17 fields": await c.post("/v1/segment", data={f"f{i}": "x" for i in range(17)},
                                      files={"image": ("a.png", png, "image/png")}),
            "no boundary": await c.post("/v1/segment", content=b"garbage",
                                        headers={"content-type": "multipart/form-data"}),
            "unterminated": await c.post(
                "/v1/segment", content=b'--xyz\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc',
                headers={"content-type": "multipart/form-data; boundary=xyz"}),
        }
    for name, r in answers.items():
        assert r.status_code == 400 and r.headers["content-type"] == PROBLEM, (name, r.text)
        # the project's own type, as every other 400: never the router's about:blank
        assert r.json()["type"] == "urn:problem-type:pspnet:bad-request", (name, r.text)
    for name in ("two files", "image and another file"):
        assert "Send one file, in field 'image'" in answers[name].json()["detail"], name


async def test_body_over_the_limit_is_refused_while_streaming(model: Path) -> None:
    """A chunked body with no Content-Length is cut off at the limit, not read to the end."""
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):
            sent += 64 * 1024
            yield bytes(64 * 1024)

    async with serving(model, max_body_bytes=256 * 1024) as c:
        r = await c.post("/v1/segment", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    assert sent <= 256 * 1024 + 64 * 1024, f"read {sent} bytes of a body over the 256 KiB limit"


# -- bearer token ------------------------------------------------------------------------------------

TOKEN = "s3cret-Token_0123456789"


@pytest.mark.parametrize(("authorization", "status"), [
    (f"Bearer {TOKEN}", 200),
    (f"bearer {TOKEN}", 200),  # the scheme is case-insensitive (RFC 9110 11.1)
    (f"Bearer   {TOKEN}  ", 200),
    (None, 401),
    ("", 401),
    ("Bearer", 401),
    ("Bearer ", 401),
    (f"Basic {TOKEN}", 401),
    (TOKEN, 401),
    (f"Bearer {TOKEN[:-1]}", 401),  # a prefix
    (f"Bearer {TOKEN}0", 401),  # longer
    (f"Bearer {TOKEN.upper()}", 401),  # the token itself is case-sensitive
    (f"Bearer {TOKEN} {TOKEN}", 401),
    (b"Bearer s3cr\xe9t", 401),  # not ASCII: still a 401, never a 500
])
async def test_bearer_token_rules(model: Path, authorization: str | bytes | None, status: int) -> None:
    headers: dict[str, str | bytes] = {"content-type": "image/png"}
    if authorization is not None:
        headers["authorization"] = authorization
    async with serving(model, auth_token=TOKEN) as c:
        r = await c.post("/v1/segment?mode=whole", content=png_bytes(), headers=headers)
        m = await c.get("/v1/models", headers={k: v for k, v in headers.items() if k == "authorization"})
    assert r.status_code == status and m.status_code == status, r.text
    if status == 401:
        assert r.headers["content-type"] == PROBLEM and r.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in r.text


async def test_auth_comes_before_the_body_and_the_parameters(model: Path) -> None:
    """Without the token nothing else is looked at: no 413 for a huge body, no 400 for bad parameters."""
    async with serving(model, auth_token=TOKEN, max_body_bytes=4096) as c:
        big = await c.post("/v1/segment", content=bytes(1 * MB), headers={"content-type": "image/png"})
        bad = await c.post("/v1/segment?mode=sideways&format=tiff", content=b"x",
                           headers={"content-type": "text/plain"})
        docs = [(await c.get(p)).status_code for p in ("/openapi.json", "/docs", "/healthz", "/metrics")]
    assert big.status_code == 401 and bad.status_code == 401
    assert docs == [200, 200, 200, 200]  # documentation and probes stay open


def test_token_comes_from_the_environment_and_stays_secret(model: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSPNET_AUTH_TOKEN", TOKEN)
    s = Settings(model=model)
    assert s.auth_token is not None and s.auth_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(s) and TOKEN not in str(s.model_dump())


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_a_blank_token_is_refused_not_matched(model: Path, monkeypatch: pytest.MonkeyPatch,
                                              blank: str) -> None:
    """Fail closed: a blank token would let "Authorization: Bearer " with nothing after it through."""
    monkeypatch.setenv("PSPNET_AUTH_TOKEN", blank)
    with pytest.raises(ValueError, match="auth_token"):
        Settings(model=model)


def test_a_blank_token_stops_the_server_at_start(model: Path) -> None:
    env = {**os.environ, "PSPNET_AUTH_TOKEN": " "}
    proc = subprocess.run([sys.executable, "-m", "service.cli", "--model", str(model), "--port", "1"],
                          capture_output=True, env=env, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "PSPNET_AUTH_TOKEN" in err and "empty" in err and "Traceback" not in err
