"""What the app holds between requests: the settings, the models of the repository and the
resources they share (metrics, the CPU executor, the memory budget, tracing).

Readiness is Triton's strict one: the service is ready when every model is. It is
live unless every model is failing (a CUDA sticky error never recovers in-process:
failing liveness is how Kubernetes restarts the pod). With several workers (``board``) the
server is ready when this worker is and every other counted worker is too, with the same model
versions (service/repository/workers.py).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from service.codec.outputs import FORMATS
from service.contract.artifact import MODES
from service.engine.admission import MemoryBudget
from service.engine.device_kit import DeviceBudget
from service.errors import BadRequest, NotFound, NotReady
from service.repository.directory import ModelEntry
from service.repository.runtime import ModelRuntime
from service.repository.workers import WorkerBoard
from service.settings import Settings
from service.telemetry.metrics import Metrics
from service.telemetry.spans import Tracing


@dataclass
class Service:
    settings: Settings
    metrics: Metrics
    tracing: Tracing
    memory: MemoryBudget
    device: DeviceBudget | None = None  # the device stitches' bound (every model's, every worker's)
    executor: ThreadPoolExecutor | None = None
    models: dict[str, ModelRuntime] = field(default_factory=dict)
    #: files of the repository that are not served, by file name
    unavailable: dict[str, ModelEntry] = field(default_factory=dict)
    default: str | None = None
    loaded: bool = False  # the repository's first load finished (every model warmed or failed)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    board: WorkerBoard | None = None  # the shared folder of a --workers N server; None: one process

    # -- lookups ---------------------------------------------------------------------------------

    def runtime(self, name: str) -> ModelRuntime:
        """The model ``name``, or NotFound listing what is served."""
        rt = self.models.get(name)
        if rt is None:
            raise NotFound(f"no model named {name!r}; served: {sorted(self.models)}")
        return rt

    def default_runtime(self) -> ModelRuntime:
        """The model of the unnamed routes (/v1/segment): PSPNET_DEFAULT_MODEL, else the only one."""
        if self.default is None:
            if not self.models:
                raise NotReady("no model is loaded yet", retry_after=1)
            raise BadRequest(f"this server holds several models: name one with /v1/models/{{name}}/segment "
                             f"(served: {sorted(self.models)}), or set PSPNET_DEFAULT_MODEL")
        return self.runtime(self.default)

    def serving(self, rt: ModelRuntime) -> ModelRuntime:
        """``rt`` if it takes requests now, else NotReady with the reason."""
        reason = rt.not_ready_reason()
        if reason is not None:
            raise NotReady(f"model {rt.name} is not ready: {reason}", retry_after=1)
        return rt

    # -- health ----------------------------------------------------------------------------------

    @property
    def ready_here(self) -> bool:
        """This process: loaded, and every model ready."""
        return self.loaded and bool(self.models) and all(rt.ready for rt in self.models.values())

    @property
    def ready(self) -> bool:
        """The server: this process, and with several workers every other one counted."""
        return self.ready_here and (self.board is None or self.board.peers_not_ready(self.versions()) is None)

    def publish(self) -> None:
        """With several workers, tell the others this process's state now (else they learn it
        within service.api.app.PUBLISH_EVERY_S)."""
        if self.board is not None:
            self.board.publish(ready=self.ready_here, models=self.versions())

    def versions(self) -> list[str]:
        """The model versions this process serves (service.repository.workers.version_key)."""
        return [rt.version for rt in self.models.values()]

    @property
    def live(self) -> bool:
        return not self.models or not all(rt.health.failing for rt in self.models.values())

    def not_ready_detail(self) -> str:
        """Why the service is not ready: each model's reason, or "loading" before any model is."""
        reasons = "; ".join(f"{rt.name}: {reason}" for rt in self.models.values()
                            if (reason := rt.not_ready_reason()) is not None)
        if not reasons and self.ready_here and self.board is not None:
            reasons = self.board.peers_not_ready(self.versions()) or ""
        return reasons or "loading"

    def readiness(self) -> dict[str, Any]:
        """The body of /readyz: overall, the default model's fields (as before the repository),
        and every model's state."""
        default = self.models.get(self.default) if self.default is not None else None
        workers = {} if self.board is None else {"workers": self.board.workers(ready_here=self.ready_here,
                                                                      models=self.versions())}
        return {
            "ready": self.ready,
            "provider": default.engine.provider if default else None,
            "fallback_reason": default.engine.fallback_reason if default else None,
            "model": default.name if default else None,
            "warmup_seconds": default.warmup_seconds if default else None,
            "models": [{"name": rt.name, "ready": rt.ready, "reason": rt.not_ready_reason(),
                        "provider": rt.engine.provider, "stitch": rt.stitch} for rt in self.models.values()],
            **workers,
        }

    # -- /v1/models ------------------------------------------------------------------------------

    def model_info(self, rt: ModelRuntime) -> dict[str, Any]:
        m = rt.meta
        return {
            "name": m.name, "dataset": m.dataset, "tile": list(m.tile),
            "classes": [{"id": i, "name": n, "color": list(c)}
                        for i, (n, c) in enumerate(zip(m.classes, m.palette, strict=True))],
            "protocol": m.to_json()["protocol"], "modes": list(MODES), "outputs": list(FORMATS),
            "provider": rt.engine.provider, "stitch": rt.stitch, "source": m.source, "metrics": m.metrics,
            "ready": rt.ready, "default": rt.name == self.default, "reason": rt.not_ready_reason(),
            "reload_error": rt.reload_error,
        }

    def models_listing(self) -> dict[str, Any]:
        return {
            "models": [self.model_info(rt) for rt in self.models.values()],
            "unavailable": [{"file": e.path.name, "name": e.name, "reason": e.error}
                            for e in self.unavailable.values()],
            "default": self.default,
        }


def service_of(request: Request) -> Service:
    s: Service = request.app.state.service
    return s
