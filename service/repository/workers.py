"""The shared folder of a ``--workers N`` server: what one worker publishes and reads of the others.

The supervisor (service/workers/) makes the folder and starts each worker with its place in it
(:class:`WorkerPlace`, one environment variable); nothing else passes between the processes::

    metrics/            Prometheus's files (PROMETHEUS_MULTIPROC_DIR) and supervisor.json
    memory.bin          the bytes each worker's requests hold (service/engine/held.py)
    device.bin          the device bytes each worker's stitches hold (service/engine/device_kit.py)
    status/<slot>.json  each worker's state, replaced about four times a second
    stats/<model>@<version>/<pid>-<ns>.bin   each worker's statistics row (repository/stats.py)

A worker is counted by the server's readiness unless it is being replaced: the supervisor marks
a dead worker's slot ``replacing``, and the replacement counts once it is ready itself. The server
is ready when every counted worker is, with the same model versions.

Tested by tests/service/repository/test_workers.py and tests/service/workers/test_supervisor.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from service.engine.held import SharedHeld
from service.repository.stats import answered, rows_of

#: the environment variable that carries a worker's place (JSON); absent: not a worker
ENV = "PSPNET_SUPERVISED"


@dataclass(frozen=True)
class WorkerPlace:
    """What the supervisor tells a worker: the folder, its slot of ``count``, the listening socket's
    descriptor, whether it replaces a worker that died, and the supervisor's pid."""

    root: str
    slot: int
    count: int
    fd: int
    replacement: bool
    supervisor: int

    def env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, value: str) -> WorkerPlace:
        return cls(**json.loads(value))


def prepare(root: Path, count: int) -> None:
    """The folder's layout, before any worker starts."""
    for sub in ("metrics", "status", "stats"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    SharedHeld.create(root / "memory.bin", count)
    SharedHeld.create(root / "device.bin", count)


def _write(path: Path, body: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(body))
    tmp.replace(path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        body: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return body


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_replacing(root: Path, slot: int) -> None:
    """The supervisor's word that ``slot``'s worker died and another is on its way."""
    _write(root / "status" / f"{slot}.json", {"slot": slot, "pid": None, "replacing": True})


def status_of(root: Path, slot: int) -> dict[str, Any] | None:
    """What ``slot``'s worker last published (or the supervisor's ``replacing``); None before."""
    return _read(root / "status" / f"{slot}.json")


def version_key(name: str, path: Path, size: int, mtime_ns: int) -> str:
    """A model version as a folder name: its name and a digest of what a reload compares."""
    digest = hashlib.sha1(f"{path}|{size}|{mtime_ns}".encode()).hexdigest()[:12]
    return f"{name}@{digest}"


class WorkerBoard:
    """One worker's view of the shared folder."""

    def __init__(self, place: WorkerPlace) -> None:
        self.place = place
        self.root = Path(place.root)
        self.pid = os.getpid()
        self.memory = SharedHeld(self.root / "memory.bin", place.slot)
        self.device = SharedHeld(self.root / "device.bin", place.slot)
        self.replacing = place.replacement  # a replacement not ready yet: the others do not wait for it

    def stats_folder(self, key: str) -> Path:
        """The folder of every worker's statistics rows of one model version (:func:`version_key`)."""
        return self.root / "stats" / key

    def publish(self, *, ready: bool, models: list[str]) -> None:
        """This worker's state now: ready here, and the model versions it serves. A replacement that
        was ready once counts from then on, like any worker."""
        self.replacing = self.replacing and not ready
        _write(self.root / "status" / f"{self.place.slot}.json",
               {"slot": self.place.slot, "pid": self.pid, "replacement": self.replacing,
                "ready": ready, "models": sorted(models)})

    def served_by(self, pid: int) -> int:
        """Requests the worker ``pid`` answered, over every model version it served."""
        return sum(answered(row) for folder in (self.root / "stats").iterdir()
                   for row in rows_of(folder, f"{pid}-*.bin"))

    def peers(self) -> list[dict[str, Any]]:
        """Every other slot's state: ``counted`` False for one being replaced (or not started again)."""
        peers = []
        for slot in range(self.place.count):
            if slot == self.place.slot:
                continue
            s = status_of(self.root, slot) or {"slot": slot, "pid": None, "ready": False, "models": []}
            replacing = bool(s.get("replacing")) or (s["pid"] is not None and not _alive(s["pid"]))
            counted = not replacing and not (s.get("replacement") and not s.get("ready"))
            peers.append({**s, "counted": counted})
        return peers

    def peers_not_ready(self, models: list[str]) -> str | None:
        """Why another worker keeps the server from being ready, or None: a counted worker that is
        not ready, or serves other model versions than ``models`` (this worker's)."""
        for p in self.peers():
            if not p["counted"]:
                continue
            if p["pid"] is None or not p.get("ready"):
                return f"worker {p['slot']} is loading or not ready"
            if sorted(p.get("models", [])) != sorted(models):
                return f"worker {p['slot']} serves other model versions (a reload is under way)"
        return None

    def workers(self, *, ready_here: bool, models: list[str]) -> list[dict[str, Any]]:
        """Every worker, this one included, for /readyz: slot, pid, ready, the model versions it
        serves (``models``: this one's), requests answered."""
        rows: list[dict[str, Any]] = [{"slot": self.place.slot, "pid": self.pid, "ready": ready_here,
                                       "models": sorted(models)}]
        rows += [{"slot": p["slot"], "pid": p["pid"], "ready": bool(p.get("ready")) and p["counted"],
                  "models": p.get("models", [])} for p in self.peers()]
        for row in rows:
            row["requests"] = self.served_by(row["pid"]) if row["pid"] is not None else 0
        return sorted(rows, key=lambda r: r["slot"])

    def ask_reload(self) -> None:
        """Have the supervisor send SIGHUP to every worker (this one's second reload finds nothing new)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.place.supervisor, signal.SIGHUP)

    def orphaned(self) -> bool:
        """The supervisor is gone (killed outright): the worker should stop too."""
        return os.getppid() != self.place.supervisor
