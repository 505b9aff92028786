"""The shared folder of a --workers N server as one worker sees it (service/repository/workers.py),
and statistics rows of several workers summed (service/repository/stats.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from service.repository.stats import ROW, ModelStats
from service.repository.workers import (
    WorkerBoard,
    WorkerPlace,
    mark_replacing,
    prepare,
    status_of,
    version_key,
)

V1, V2 = version_key("m", Path("/m.onnx"), 10, 1), version_key("m", Path("/m.onnx"), 10, 2)


def _board(root: Path, slot: int = 0, count: int = 3, *, replacement: bool = False) -> WorkerBoard:
    return WorkerBoard(WorkerPlace(root=str(root), slot=slot, count=count, fd=-1, replacement=replacement,
                                   supervisor=os.getppid()))


def _peer(root: Path, slot: int, *, ready: bool, models: list[str], replacement: bool = False,
          pid: int | None = None) -> None:
    """Another worker's status, as it would publish it (this process's pid: a live one)."""
    board = _board(root, slot, replacement=replacement)
    board.pid = os.getpid() if pid is None else pid
    board.publish(ready=ready, models=models)


def test_the_place_travels_in_one_variable(tmp_path: Path) -> None:
    place = WorkerPlace(root=str(tmp_path), slot=1, count=2, fd=7, replacement=True, supervisor=1)
    assert WorkerPlace.from_env(place.env()) == place
    assert V1 != V2 and V1.startswith("m@")


def test_a_worker_not_yet_started_keeps_the_server_not_ready(tmp_path: Path) -> None:
    prepare(tmp_path, 3)
    board = _board(tmp_path)
    assert board.peers_not_ready([V1]) == "worker 1 is loading or not ready"
    _peer(tmp_path, 1, ready=True, models=[V1])
    _peer(tmp_path, 2, ready=False, models=[V1])
    assert board.peers_not_ready([V1]) == "worker 2 is loading or not ready"
    _peer(tmp_path, 2, ready=True, models=[V1])
    assert board.peers_not_ready([V1]) is None


def test_other_model_versions_mean_a_reload_under_way(tmp_path: Path) -> None:
    prepare(tmp_path, 2)
    _peer(tmp_path, 1, ready=True, models=[V1])
    assert "other model versions" in (_board(tmp_path, count=2).peers_not_ready([V2]) or "")


def test_a_worker_being_replaced_is_not_waited_for(tmp_path: Path) -> None:
    prepare(tmp_path, 3)
    board = _board(tmp_path)
    _peer(tmp_path, 1, ready=True, models=[V1])
    mark_replacing(tmp_path, 2)  # the supervisor's word: it died
    assert board.peers_not_ready([V1]) is None
    _peer(tmp_path, 2, ready=False, models=[], replacement=True)  # the replacement, loading
    assert board.peers_not_ready([V1]) is None
    _peer(tmp_path, 2, ready=True, models=[V2], replacement=True)  # once ready it counts
    assert board.peers_not_ready([V1]) is not None
    replacement = _board(tmp_path, 2, replacement=True)
    replacement.publish(ready=True, models=[V1])
    replacement.publish(ready=False, models=[V1])  # ready once, then failing: it is waited for now
    assert board.peers_not_ready([V1]) == "worker 2 is loading or not ready"
    dead = 2**22 + 12345  # a pid past Linux's largest: its status is that of a dead worker
    _peer(tmp_path, 2, ready=False, models=[], pid=dead)
    assert board.peers_not_ready([V1]) is None
    assert status_of(tmp_path, 2)["pid"] == dead  # type: ignore[index]


def test_statistics_rows_of_every_worker_add_up(tmp_path: Path) -> None:
    prepare(tmp_path, 2)
    board = _board(tmp_path, count=2)
    folder = board.stats_folder(V1)
    mine = ModelStats(folder)
    mine.request(ok=True, images=2, seconds=0.5, stages={"decode": 0.1, "batch": 0.2})
    mine.batch(4, 0.25)
    # another worker's row (another pid), one request failed, one answered
    other = ModelStats()
    other.request(ok=True, images=1, seconds=1.0, stages={})
    other.request(ok=False, images=1, seconds=0.1, stages={})
    other.batch(4, 0.5)
    (folder / "99999999-1.bin").write_bytes(other.total().tobytes())
    stats = mine.json("m", "1")
    assert stats["inference_count"] == 3 and stats["execution_count"] == 2
    assert stats["inference_stats"]["success"] == {"count": 2, "ns": 1_500_000_000}
    assert stats["inference_stats"]["fail"] == {"count": 1, "ns": 100_000_000}
    assert stats["batch_stats"] == [{"batch_size": 4, "compute_infer": {"count": 2, "ns": 750_000_000}}]
    assert stats["last_inference"] == max(int(mine.total()[2]), int(other.total()[2]))
    assert board.served_by(os.getpid()) == 1 and board.served_by(99999999) == 2
    _peer(tmp_path, 1, ready=True, models=[V1], pid=99999999)
    rows = board.workers(ready_here=True, models=[V1])
    assert [(w["slot"], w["requests"], w["models"]) for w in rows] == [(0, 1, [V1]), (1, 2, [V1])]


def test_one_process_stats_keep_no_file(tmp_path: Path) -> None:
    stats = ModelStats()
    stats.request(ok=True, images=1, seconds=0.1, stages={"encode": 0.05})
    assert stats.inference_count == 1 and stats.total().shape == (ROW,)
    assert np.count_nonzero(stats.total()) > 0 and not list(tmp_path.iterdir())


def test_orphaned_when_the_supervisor_is_not_the_parent(tmp_path: Path) -> None:
    prepare(tmp_path, 1)
    assert not _board(tmp_path, count=1).orphaned()
    place = WorkerPlace(root=str(tmp_path), slot=0, count=1, fd=-1, replacement=False, supervisor=1)
    assert WorkerBoard(place).orphaned() == (os.getppid() != 1)
