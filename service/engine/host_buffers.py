"""Host buffers for a session's outputs, reused once nobody holds them (issue #26, item 4).

On CUDA, ONNX Runtime copies a bound output from the device into the host buffer given. A fresh
``np.empty`` of 30-100 MB a batch is fresh pages: the copy into pageable memory faults each one in
(the H200 run measured 28.86 ms for a batch of 8 logits against 10.48 ms for a plain
``session.run``, whose outputs land in ORT's warm arena). These buffers are handed out again when
the batch that used them is done with: the rows a request keeps are numpy views, and every view
holds a reference to its buffer, so a buffer that only the pool references is free (CPython's
reference count says so; no bookkeeping by the callers).

Each shape keeps at most ``keep`` buffers, and the pool at most ``max_bytes`` in all (a batch of 8
logits of a 150-class model at 473x473 is 1.1 GB: such a buffer is never kept); a busy server lends
them all and then allocates fresh ones as before, which it drops when done. The engine uses this on
CUDA only: on the CPU, large outputs take fresh buffers on purpose (they go back to the system;
sessions.py ``OWN_OUTPUT_BYTES``).

Tested by tests/service/engine/test_host_buffers.py.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

#: references to a pooled buffer that nobody else holds: the pool's list, the loop's name, getrefcount's
_ONLY_THE_POOL = 3


class HostBuffers:
    """Buffers by (shape, dtype), lent out and taken back when no view of them is alive."""

    def __init__(self, keep: int = 2, max_bytes: int = 2**28) -> None:
        self.keep = keep
        self.max_bytes = max_bytes
        self._kept = 0  # bytes of the buffers pooled
        self._pools: dict[tuple[tuple[int, ...], str], list[npt.NDArray[Any]]] = {}
        self._lock = threading.Lock()
        self.reused = 0  # buffers handed out again
        self.fresh = 0  # buffers allocated (pooled or not)

    def take(self, shape: tuple[int, ...], dtype: type[np.generic]) -> npt.NDArray[Any]:
        """A C-contiguous buffer of this shape and dtype that nobody else holds; its contents are stale."""
        key = (tuple(shape), np.dtype(dtype).str)
        with self._lock:
            pool = self._pools.setdefault(key, [])
            for buf in pool:
                if sys.getrefcount(buf) == _ONLY_THE_POOL:
                    self.reused += 1
                    return buf
            self.fresh += 1
            buf = np.empty(shape, dtype=dtype)
            if len(pool) < self.keep and self._kept + buf.nbytes <= self.max_bytes:
                pool.append(buf)
                self._kept += buf.nbytes
            return buf

    def held_bytes(self) -> int:
        """Bytes the pool keeps (lent or not)."""
        with self._lock:
            return self._kept
