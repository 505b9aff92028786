"""Loading the repository at start, and re-reading it on SIGHUP or ``POST /v1/admin/reload``.

A reload compares each artifact with what serves now (path, size, mtime): a new
or changed model is loaded and warmed up before it takes traffic, then swapped
in; the version it replaces, and a model whose file is gone, stop admitting and
drain in the background. A file that no longer loads leaves the version that was
serving in place, with the reason in /v1/models (``reload_error``) and the log.
One reload at a time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from service.errors import Conflict
from service.repository.directory import ModelEntry, RepositoryError, default_model, scan
from service.repository.runtime import FileIdentity, ModelRuntime, start_model
from service.repository.state import Service

log = logging.getLogger("pspnet.reload")


@dataclass
class ReloadReport:
    loaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # file name -> reason

    def json(self) -> dict[str, object]:
        return {"loaded": self.loaded, "unchanged": self.unchanged, "removed": self.removed,
                "failed": self.failed}


async def _load(entry: ModelEntry, service: Service, *, warm: bool) -> ModelRuntime:
    rt = await start_model(entry, service.settings, service.metrics, service.board, service.device)
    if warm:
        try:
            await rt.warm_up(service.settings)
        except BaseException:
            await rt.stop(drain=False)
            raise
    return rt


async def load_first(service: Service) -> list[ModelRuntime]:
    """The start: every servable artifact loaded (not yet warmed: the caller warms them in the
    background while /readyz says 503). A RepositoryError (nothing servable, two files with one
    name, an unknown default) stops the start."""
    entries = await asyncio.to_thread(scan, service.settings.model)
    default = default_model(entries, service.settings.default_model)
    for e in entries:
        if not e.available:
            service.unavailable[e.path.name] = e
            log.warning("not serving %s: %s", e.path.name, e.error)
            continue
        try:
            service.models[e.name] = await _load(e, service, warm=False)
        except Exception as ex:  # e.g. metadata fine but ONNX Runtime cannot load the graph
            log.error("not serving %s: %s", e.path.name, ex)
            service.unavailable[e.path.name] = ModelEntry(e.name, e.path, None, f"failed to load: {ex}")
    if not service.models:
        raise RepositoryError(f"no model of {service.settings.model} could be loaded: "
                              + "; ".join(f"{e.path.name}: {e.error}" for e in service.unavailable.values()))
    service.default = default if default in service.models else None
    return list(service.models.values())


async def reload(service: Service) -> ReloadReport:
    """Re-read the repository; raises Conflict (nothing changed) when it cannot be served as a whole."""
    async with service.reload_lock:
        try:
            entries = await asyncio.to_thread(lambda: scan(service.settings.model, require_servable=False))
        except RepositoryError as refused:
            log.error("reload refused, nothing changed: %s", refused)
            raise Conflict(f"reload refused, nothing changed: {refused}") from None
        report = ReloadReport()
        current = dict(service.models)
        by_path = {rt.identity.path: rt for rt in current.values()}
        # the names that will serve: usable files, and the old versions of files that broke
        kept = {by_path[e.path.resolve()].name for e in entries
                if not e.available and e.path.resolve() in by_path}
        names = {e.name for e in entries if e.available} | kept
        wanted = service.settings.default_model
        if wanted is not None and wanted not in names:
            raise Conflict(f"reload refused, nothing changed: the default model {wanted!r} would not be "
                           f"served (serving would be {sorted(names)})")
        if not names:
            raise Conflict("reload refused, nothing changed: no model in the repository can be served")
        models: dict[str, ModelRuntime] = {}
        unavailable: dict[str, ModelEntry] = {}
        for e in entries:
            old_by_file = by_path.get(e.path.resolve())
            if not e.available:
                if old_by_file is not None:  # its file broke: the version that serves stays
                    old_by_file.reload_error = e.error
                    models[old_by_file.name] = old_by_file
                    report.failed[e.path.name] = e.error or "unusable"
                    log.error("reload: %s is broken, %s keeps serving its previous version: %s",
                              e.path.name, old_by_file.name, e.error)
                else:
                    unavailable[e.path.name] = e
                continue
            old = current.get(e.name)
            if old is not None and old.identity == FileIdentity.of(e.path):
                old.reload_error = None
                models[e.name] = old
                report.unchanged.append(e.name)
                continue
            try:
                models[e.name] = await _load(e, service, warm=True)
                report.loaded.append(e.name)
                log.info("reload: %s %s from %s", "replaced" if old else "added", e.name, e.path.name)
            except Exception as ex:
                reason = f"failed to load: {ex}"
                report.failed[e.path.name] = reason
                log.error("reload: %s: %s", e.path.name, reason)
                if old is not None:
                    old.reload_error = reason
                    models[e.name] = old
                else:
                    unavailable[e.path.name] = ModelEntry(e.name, e.path, None, reason)
        retired = [rt for rt in current.values() if all(rt is not m for m in models.values())]
        service.models, service.unavailable = models, unavailable
        service.default = wanted if wanted in models else (next(iter(models)) if len(models) == 1 else None)
        service.publish()  # the other workers compare model versions: never let them read stale ones
        for rt in retired:
            if rt.name not in models:
                report.removed.append(rt.name)
                service.metrics.forget_model(rt.name)
            _drain_later(service, rt)
        return report


def _drain_later(service: Service, rt: ModelRuntime) -> None:
    rt.accepting = False
    task = asyncio.create_task(rt.stop(drain=True, grace_s=service.settings.request_timeout_s))
    service.background.add(task)
    task.add_done_callback(service.background.discard)
