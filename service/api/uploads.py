"""Reading a request's body: bounded, and the image of /v1 as a raw body or multipart field ``image``.

Tested by tests/service/api/test_app.py (raw body, multipart, the byte limit) and
tests/service/api/test_hostile_http.py (malformed multipart, a body over the limit while streaming).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Message

from service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

#: multipart framing around the image part may add this much to the body
MULTIPART_OVERHEAD = 64 * 1024
#: a multipart body carries one file (the image) and at most this many fields in all
MAX_FILES, MAX_FIELDS = 1, 16


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def image_bytes(request: Request, max_body_bytes: int) -> tuple[bytes, str | None]:
    """The upload as bytes and its declared type: multipart field ``image`` or a raw body."""
    ctype = request.headers.get("content-type")
    base = (ctype or "").split(";")[0].strip().lower()
    if base == "multipart/form-data":
        raw = await read_body(request, max_body_bytes + MULTIPART_OVERHEAD)

        async def replay() -> Message:
            return {"type": "http.request", "body": raw, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=MAX_FILES, max_fields=MAX_FIELDS)
        except (MultiPartException, HTTPException) as e:
            # Starlette's parser refuses (two files, too many fields, broken framing) with a plain
            # HTTP 400 that would go out as about:blank; ours says what to send
            message = e.message if isinstance(e, MultiPartException) else str(e.detail)
            raise BadRequest(f"cannot read the multipart body: {message.rstrip('.')}. Send one file, "
                             f"in field 'image', with at most {MAX_FIELDS} fields in all") from None
        part = form.get("image")
        if part is None or isinstance(part, str):
            raise BadRequest("multipart body needs a file field named 'image'")
        data = await part.read()
        if len(data) > max_body_bytes:
            raise PayloadTooLarge(f"image is over the limit of {max_body_bytes} bytes")
        return data, part.content_type
    if base and not (base.startswith("image/") or base == "application/octet-stream"):
        raise UnsupportedMediaType(
            f"send the image as a raw body with an image/* Content-Type or as multipart field 'image', "
            f"not {base}")
    return await read_body(request, max_body_bytes), ctype


async def until_disconnect(receive: Callable[[], Awaitable[Message]]) -> None:
    """Returns when the client hangs up (the body has been read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
