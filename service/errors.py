"""Domain errors and their RFC 9457 problem bodies (docs/DESIGN.md "Service").

Pure Python, no web framework: the codecs, the batcher and the engine raise
these, and the HTTP layer turns any exception into a response in one place
with :func:`problem_body`, :func:`status_of` and :meth:`ServiceError.headers`.
Each class gets its status, title and type from the single table
:data:`PROBLEM_TYPES`; subclasses inherit their parent's row.

An exception that is not a :class:`ServiceError` is a bug, not a client
mistake: its body is a bare 500 that carries the request id and nothing of
the exception (no message, no type, no traceback).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from http import HTTPStatus
from typing import ClassVar

PROBLEM_MEDIA_TYPE = "application/problem+json"
# RFC 9457 wants "type" to be a URI; these are stable identifiers to switch
# on, not pages to fetch (the "urn:problem-type:" form follows the Belgian
# government's public REST guidelines, which use it the same way).
PROBLEM_TYPE_PREFIX = "urn:problem-type:pspnet:"
INTERNAL_DETAIL = "The server failed to handle this request; quote the request id when reporting it."


CLIENT_CLOSED = 499  # nginx's status for a client that went away: logged, never sent


class ClientGone(Exception):
    """The client hung up before its answer was ready (its queued tiles were dropped): answered
    with a bodiless 499 that only the access line and the metrics see. Not a problem body."""


@dataclass(frozen=True)
class ProblemType:
    """One row of the table, an RFC 9457 problem type: what a class of error looks like on the wire."""

    status: int
    title: str
    slug: str

    @property
    def type(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.slug


class ServiceError(Exception):
    """An error the client may see: its ``detail`` must be safe to send.

    ``retry_after`` (seconds) becomes a ``Retry-After`` header; only the 503s
    set it by default.
    """

    default_detail: ClassVar[str] = "The server failed to handle this request."
    default_retry_after: ClassVar[float | None] = None

    def __init__(self, detail: str | None = None, *, retry_after: float | None = None) -> None:
        self.detail = detail if detail is not None else self.default_detail
        self.retry_after = retry_after if retry_after is not None else self.default_retry_after
        if self.retry_after is not None and not self.retry_after >= 0:
            raise ValueError(f"retry_after must be >= 0 seconds, got {self.retry_after}")
        super().__init__(self.detail)

    @property
    def problem_type(self) -> ProblemType:
        return problem_type_of(type(self))

    @property
    def status(self) -> int:
        return self.problem_type.status

    def headers(self) -> dict[str, str]:
        """Extra response headers: ``Retry-After`` in whole seconds, at least 1."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class BadRequest(ServiceError):
    default_detail = "The request is malformed or a parameter is invalid."


class Unauthorized(ServiceError):
    default_detail = "A valid 'Authorization: Bearer <token>' header is required."

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "WWW-Authenticate": "Bearer"}


class NotFound(ServiceError):
    default_detail = "No such model."


class Conflict(ServiceError):
    default_detail = "The request conflicts with the server's state."


class PayloadTooLarge(ServiceError):
    default_detail = "The image is larger than this server accepts."


class UnsupportedMediaType(ServiceError):
    default_detail = "The body is not an image in a supported format."


class UndecodableImage(ServiceError):
    default_detail = "The image data could not be decoded."


class Overloaded(ServiceError):
    default_detail = "The server is at capacity; retry later."
    default_retry_after = 1.0


class NotReady(ServiceError):
    default_detail = "The model is not loaded and warmed up yet; retry later."
    default_retry_after = 5.0


class DeadlineExceeded(ServiceError):
    default_detail = "The request did not finish within its deadline."


# The one table. Titles are per type, never per occurrence (RFC 9457 3.1.3);
# what happened this time goes in "detail".
PROBLEM_TYPES: dict[type[ServiceError], ProblemType] = {
    ServiceError: ProblemType(500, "Internal Server Error", "internal"),
    BadRequest: ProblemType(400, "Bad Request", "bad-request"),
    Unauthorized: ProblemType(401, "Unauthorized", "unauthorized"),
    NotFound: ProblemType(404, "Not Found", "not-found"),
    Conflict: ProblemType(409, "Conflict", "conflict"),
    PayloadTooLarge: ProblemType(413, "Content Too Large", "too-large"),
    UnsupportedMediaType: ProblemType(415, "Unsupported Media Type", "unsupported-media-type"),
    UndecodableImage: ProblemType(422, "Undecodable Image", "undecodable-image"),
    Overloaded: ProblemType(503, "Overloaded", "overloaded"),
    NotReady: ProblemType(503, "Not Ready", "not-ready"),
    DeadlineExceeded: ProblemType(504, "Deadline Exceeded", "deadline-exceeded"),
}


def problem_type_of(cls: type[ServiceError]) -> ProblemType:
    """The row for ``cls`` or its nearest ancestor in the table."""
    for base in cls.__mro__:
        if issubclass(base, ServiceError) and base in PROBLEM_TYPES:
            return PROBLEM_TYPES[base]
    raise TypeError(f"{cls!r} is not a ServiceError")


def status_of(exc: BaseException) -> int:
    """The HTTP status for any exception: 500 for everything that is not ours."""
    return exc.status if isinstance(exc, ServiceError) else 500


def problem_body(exc: BaseException, *, request_id: str, instance: str | None = None) -> dict[str, object]:
    """The ``application/problem+json`` body for ``exc``.

    ``instance`` identifies the occurrence (the HTTP layer passes the request
    path); ``request_id`` is an extension member so a client can quote it.
    """
    if isinstance(exc, ServiceError):
        kind, detail = exc.problem_type, exc.detail
    else:  # a bug: say nothing about it
        kind, detail = PROBLEM_TYPES[ServiceError], INTERNAL_DETAIL
    return _body(kind.type, kind.title, kind.status, detail, request_id, instance)


def http_problem(
    status: int, detail: str, *, request_id: str, instance: str | None = None
) -> dict[str, object]:
    """A problem body for a plain HTTP status raised outside our code (404, 405 from the router).

    ``type`` is ``about:blank`` and the title the status phrase, as RFC 9457
    4.2.1 prescribes for problems with no meaning beyond the status code.
    """
    title = HTTPStatus(status).phrase
    return _body("about:blank", title, status, detail, request_id, instance)


def _body(
    type_: str, title: str, status: int, detail: str, request_id: str, instance: str | None
) -> dict[str, object]:
    body: dict[str, object] = {"type": type_, "title": title, "status": status, "detail": detail}
    if instance is not None:
        body["instance"] = instance
    body["request_id"] = request_id
    return body
