"""Bytes held by the requests in flight of several server processes: one file, a slot per worker.

With ``pspnet-serve --workers N`` every worker reserves its requests' memory in its own slot of
one small file (N int64s, mapped into each process); the server's total is the sum of the slots.
A check and a reservation happen under an exclusive ``flock`` on the file, so two workers never
both take the last megabytes; a worker only ever changes its own slot, so the supervisor can zero
the slot of a worker that died holding reservations before it starts the replacement.

Tested by tests/service/engine/test_admission.py (the budget over two processes' slots).
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt


class SharedHeld:
    """The slots file of ``path``, seen from one process (``slot``: this process's, or -1 for none)."""

    def __init__(self, path: Path, slot: int = -1) -> None:
        self.path = path
        self.slot = slot
        self._fd = os.open(path, os.O_RDWR)
        size = os.fstat(self._fd).st_size
        if size == 0 or size % 8:
            os.close(self._fd)
            raise ValueError(f"{path} is not a slots file ({size} bytes)")
        self._map = mmap.mmap(self._fd, size)
        self.slots: npt.NDArray[np.int64] = np.frombuffer(self._map, dtype=np.int64)
        if not -1 <= slot < len(self.slots):
            raise ValueError(f"slot {slot} of {len(self.slots)}")

    @classmethod
    def create(cls, path: Path, slots: int) -> SharedHeld:
        """A new file of ``slots`` zeroed slots (the supervisor's, before it starts any worker)."""
        path.write_bytes(bytes(8 * slots))
        return cls(path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[npt.NDArray[np.int64]]:
        """Every slot, under the file's lock: read them all, change this process's own."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield self.slots
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def take(self, nbytes: int, limit: int) -> tuple[bool, int]:
        """Add ``nbytes`` to this process's slot if every slot's total stays within ``limit``, checked and
        taken at once (no other worker in between): whether it was taken, and the total before."""
        with self.locked() as slots:
            held = int(slots.sum())
            if held + nbytes > limit:
                return False, held
            slots[self.slot] += nbytes
            return True, held

    def give(self, nbytes: int) -> None:
        """Take ``nbytes`` back out of this process's slot."""
        with self.locked() as slots:
            slots[self.slot] -= nbytes

    def total(self) -> int:
        with self.locked() as slots:
            return int(slots.sum())

    def clear(self, slot: int) -> None:
        """Forget what ``slot`` held: its worker is gone, and so are its requests."""
        with self.locked() as slots:
            slots[slot] = 0
