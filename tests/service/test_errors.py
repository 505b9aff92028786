"""Domain errors -> statuses, headers and RFC 9457 bodies."""

from __future__ import annotations

import json

import pytest

from service.errors import (
    PROBLEM_MEDIA_TYPE,
    PROBLEM_TYPE_PREFIX,
    PROBLEM_TYPES,
    BadRequest,
    DeadlineExceeded,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    UndecodableImage,
    UnsupportedMediaType,
    http_problem,
    problem_body,
    status_of,
)

STATUSES = [
    (BadRequest, 400), (Unauthorized, 401), (PayloadTooLarge, 413), (UnsupportedMediaType, 415),
    (UndecodableImage, 422), (Overloaded, 503), (NotReady, 503), (DeadlineExceeded, 504),
]


@pytest.mark.parametrize(("cls", "status"), STATUSES)
def test_each_class_has_its_status_and_a_complete_body(cls: type[ServiceError], status: int) -> None:
    exc = cls("what happened this time")
    assert exc.status == status == status_of(exc)
    body = problem_body(exc, request_id="rid-1", instance="/v1/segment")
    kind = PROBLEM_TYPES[cls]
    assert exc.problem_type == kind
    assert body == {
        "type": PROBLEM_TYPE_PREFIX + kind.slug, "title": kind.title, "status": status,
        "detail": "what happened this time", "instance": "/v1/segment", "request_id": "rid-1",
    }
    json.dumps(body)  # serialisable as is


def test_types_and_titles_are_distinct_per_class() -> None:
    # Two 503s must still be told apart by "type" (clients switch on it).
    assert len({p.type for p in PROBLEM_TYPES.values()}) == len(PROBLEM_TYPES)
    overloaded = problem_body(Overloaded(), request_id="r")
    not_ready = problem_body(NotReady(), request_id="r")
    assert overloaded["status"] == not_ready["status"] == 503 and overloaded["type"] != not_ready["type"]


def test_default_detail_and_no_instance() -> None:
    body = problem_body(UndecodableImage(), request_id="r")
    assert body["detail"] == UndecodableImage.default_detail
    assert "instance" not in body


def test_subclass_inherits_its_parents_row() -> None:
    class TruncatedImage(UndecodableImage):
        pass

    assert TruncatedImage("cut off").status == 422
    assert problem_body(TruncatedImage("cut off"), request_id="r")["title"] == "Undecodable Image"


def test_unknown_exception_is_a_500_that_leaks_nothing() -> None:
    secret = "password=hunter2 at /srv/models/secret.onnx"
    body = problem_body(RuntimeError(secret), request_id="abc123", instance="/v1/segment")
    assert status_of(RuntimeError(secret)) == 500
    assert body["status"] == 500 and body["request_id"] == "abc123"
    text = json.dumps(body)
    for leak in ("hunter2", "secret.onnx", "RuntimeError", "Traceback"):
        assert leak not in text
    # A bare ServiceError is ours but says nothing specific either: also 500.
    assert problem_body(ServiceError(), request_id="r")["status"] == 500


def test_retry_after_header_is_whole_seconds_at_least_one() -> None:
    assert Overloaded().headers() == {"Retry-After": "1"}
    assert NotReady().headers() == {"Retry-After": "5"}
    assert Overloaded(retry_after=2.2).headers() == {"Retry-After": "3"}
    assert Overloaded(retry_after=0).headers() == {"Retry-After": "1"}
    assert BadRequest().headers() == {}
    assert DeadlineExceeded().headers() == {}
    assert Unauthorized().headers() == {"WWW-Authenticate": "Bearer"}
    with pytest.raises(ValueError):
        Overloaded(retry_after=-1)
    with pytest.raises(ValueError):
        Overloaded(retry_after=float("nan"))


def test_http_problem_for_router_statuses() -> None:
    body = http_problem(404, "No route /nope", request_id="r", instance="/nope")
    assert body == {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "No route /nope",
                    "instance": "/nope", "request_id": "r"}
    assert http_problem(405, "x", request_id="r")["title"] == "Method Not Allowed"


def test_media_type() -> None:
    assert PROBLEM_MEDIA_TYPE == "application/problem+json"
