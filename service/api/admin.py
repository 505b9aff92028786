"""``POST /v1/admin/reload``: re-read the model repository (as SIGHUP does).

Mounted only when ``PSPNET_AUTH_TOKEN`` is set, and it requires the token: an
unauthenticated way to make the server load files would be an attack surface.

With several workers the one that takes the request reloads, then has the supervisor send SIGHUP
to every worker, so that all of them serve the same files.

Tested by tests/service/repository/test_reload.py (the reload route, token only).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from service.api.auth import require_token
from service.api.openapi import problems
from service.repository.reload import reload
from service.repository.state import service_of


def router() -> APIRouter:
    r = APIRouter(tags=["admin"], dependencies=[Depends(require_token)])

    @r.post("/v1/admin/reload", responses=problems(401, 409))
    async def reload_models(request: Request) -> dict[str, Any]:
        """Re-read the repository: new and changed models are warmed up before they take traffic,
        removed ones drain; a broken file leaves its previous version serving."""
        service = service_of(request)
        report = await reload(service)
        if service.board is not None:
            service.board.ask_reload()
        return report.json()

    return r
