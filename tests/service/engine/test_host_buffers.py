"""Host buffers reused once nobody holds them (service/engine/host_buffers.py), alone and in the engine."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from service.engine.host_buffers import HostBuffers
from service.engine.sessions import Engine
from tests.service.engine.test_device_route import CudaStandIn
from tests.service.tiny_model import build_tiny_artifact


def test_a_buffer_is_lent_again_only_when_no_view_of_it_is_alive() -> None:
    pool = HostBuffers(keep=2)
    first = pool.take((4, 3), np.float32)
    rows = first[1:3]  # what a request keeps of a batch: a view
    first_id = id(first)
    del first
    second = pool.take((4, 3), np.float32)
    assert id(second) != first_id and pool.fresh == 2  # the view holds the first
    del rows
    third = pool.take((4, 3), np.float32)
    assert id(third) == first_id and pool.reused == 1
    assert pool.take((4, 3), np.uint8).dtype == np.uint8  # another dtype, another pool
    assert pool.held_bytes() == 2 * 4 * 3 * 4 + 4 * 3


def test_beyond_keep_buffers_are_fresh_and_not_kept() -> None:
    pool = HostBuffers(keep=1)
    held = [pool.take((8,), np.float32) for _ in range(3)]
    assert len({id(b) for b in held}) == 3 and pool.fresh == 3
    assert pool.held_bytes() == 8 * 4  # only the first is the pool's
    kept = id(held[0])
    held.clear()
    assert id(pool.take((8,), np.float32)) == kept


def test_threads_never_get_the_same_buffer_at_once() -> None:
    pool = HostBuffers(keep=4)
    taken: list[int] = []
    hold = threading.Barrier(4)

    def worker() -> None:
        buf = pool.take((16,), np.float32)
        taken.append(id(buf))
        hold.wait()  # every thread holds its buffer here

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(taken)) == 4


def test_the_pool_keeps_at_most_max_bytes() -> None:
    pool = HostBuffers(keep=4, max_bytes=100)
    small = pool.take((20,), np.float32)  # 80 bytes: kept
    big = pool.take((30,), np.float32)  # 120 bytes: never kept
    assert pool.held_bytes() == 80
    del small, big
    pool.take((30,), np.float32)
    assert pool.reused == 0 and pool.fresh == 3


def test_keep_zero_pools_nothing() -> None:
    pool = HostBuffers(keep=0)
    a = pool.take((2,), np.float32)
    del a
    pool.take((2,), np.float32)
    assert pool.reused == 0 and pool.held_bytes() == 0


def test_on_cuda_the_engine_copies_outputs_into_reused_buffers(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = build_tiny_artifact(tmp_path / "tiny.onnx")
    CudaStandIn.install(monkeypatch)
    engine = Engine(tiny, provider="cuda", max_batch=2)
    tiles = np.random.default_rng(0).uniform(0, 255, (2, 3, 32, 48)).astype(np.float32)
    first = engine.run_outputs(tiles, ("logits",))["logits"]
    expected, address = first.copy(), first.ctypes.data
    kept = first[:1]  # a request still holds its rows
    second = engine.run_outputs(tiles, ("logits",))["logits"]
    assert not np.shares_memory(second, kept)
    np.testing.assert_array_equal(kept, expected[:1])  # never overwritten while held
    del first, kept
    third = engine.run_outputs(tiles[::-1].copy(), ("logits",))["logits"]
    assert third.ctypes.data == address  # the first batch's buffer, lent again once let go
    np.testing.assert_array_equal(third, expected[::-1])
    buffers = engine._sessions[0].buffers
    assert buffers is not None and buffers.reused >= 1
    assert Engine(tiny, provider="cpu")._sessions[0].buffers is None  # on the CPU: fresh buffers, on purpose
