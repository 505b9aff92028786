"""The bearer token check of the model routes (``PSPNET_AUTH_TOKEN``; none set: no check).

Tested by tests/service/api/test_app.py and tests/service/api/test_hostile_http.py (the bearer token
rules).
"""

from __future__ import annotations

import hmac

from starlette.requests import Request

from service.errors import Unauthorized
from service.repository.state import service_of


def require_token(request: Request) -> None:
    """A FastAPI dependency: 401 unless ``Authorization: Bearer <token>`` matches."""
    token = service_of(request).settings.auth_token
    if token is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    expected = token.get_secret_value().encode()
    # compare_digest on bytes: the time does not depend on where the strings differ
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected):
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")
