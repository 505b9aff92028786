"""The stitch's small graphs on the engine's device, and logits that stay there.

On CUDA a batch's logits need not come to the host: :class:`service.engine.sessions.Engine`
can leave them on the GPU as ONNX Runtime values (the runner output :data:`DEVICE_LOGITS`),
and the request's stitch runs there too (service/engine/device_stitch.py), through the graphs
of ``service/engine/graphs/`` (made by model/device_graphs.py: ``service/`` never imports
``onnx``). Each run binds its inputs where they already are and leaves its output on the
device, except the last one (labels or the soft output asked for), which comes to the host.

:class:`DeviceKit` holds one ONNX Runtime session per graph on the engine's provider. On the
CPU provider the same code runs with every value in host memory: what the test suite checks.

Rows: a batch's device logits are a :class:`DeviceBatch`; the rows of one submission, which
may lie in several batches (a request split over batches), a :class:`DeviceRows`.

Tested by tests/service/engine/test_device_stitch.py and tests/service/engine/test_device_route.py.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from importlib import resources
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from service.engine.held import SharedHeld

log = logging.getLogger("service.engine")

#: the runner output of logits left on the device (a :class:`DeviceBatch` per batch)
DEVICE_LOGITS = "logits@device"
#: whether batches may leave their logits on the device for the stitch graphs: "auto" on CUDA only
DeviceStitchChoice = Literal["auto", "on", "off"]
CUDA = "CUDAExecutionProvider"
#: the graphs the kit loads, by file stem (model/device_graphs.py makes each)
GRAPH_NAMES = ("window", "window_flip", "fold", "labels_uint8", "labels_uint16", "confidence", "probability",
               "probabilities", "tile_logits_float_half_pixel", "tile_logits_float_align_corners",
               "tile_logits_float16_half_pixel", "tile_logits_float16_align_corners")

Value = Any  # an onnxruntime.OrtValue
Feed = Mapping[str, "Value | npt.NDArray[Any]"]


class DeviceRows:
    """Consecutive tiles' logits on the device: pieces of one or several batches' outputs."""

    __slots__ = ("pieces", "rows")

    def __init__(self, rows: int) -> None:
        self.rows = rows
        #: (first row, stop, the batch's value, the first row's index in that value)
        self.pieces: list[tuple[int, int, Value, int]] = []

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, part: slice) -> DeviceRows:
        """Rows ``part`` (consecutive) of these, the pieces they lie in."""
        start, stop, step = part.indices(self.rows)
        if step != 1:
            raise ValueError("device rows are taken in consecutive runs")
        out = DeviceRows(max(stop - start, 0))
        for a, b, value, at in self.pieces:
            lo, hi = max(a, start), min(b, stop)
            if lo < hi:
                out.pieces.append((lo - start, hi - start, value, at + lo - a))
        return out

    def __setitem__(self, part: slice, rows: DeviceRows) -> None:
        """Place ``rows`` at ``part`` (how a request split over batches is assembled)."""
        start, stop, _ = part.indices(self.rows)
        if stop - start != len(rows):
            raise ValueError(f"{len(rows)} rows do not fill rows {start}..{stop}")
        self.pieces += [(start + a, start + b, value, at) for a, b, value, at in rows.pieces]

    def empty(self, total: int) -> DeviceRows:
        """Rows of a request of ``total`` tiles, to be filled by ``[a:b] =`` (numpy's ``np.empty`` for
        host rows; :func:`service.engine.runners.run_batch` asks each kind for its own)."""
        return DeviceRows(total)

    def locate(self, row: int) -> tuple[Value, npt.NDArray[np.int64]]:
        """The batch value holding ``row`` and the row's index in it (as the window graphs take it)."""
        for a, b, value, at in self.pieces:
            if a <= row < b:
                return value, np.array([at + row - a], dtype=np.int64)
        raise IndexError(f"row {row} has not arrived ({self.rows} rows)")


class DeviceBatch(DeviceRows):
    """One batch's logits ``(N, C, H, W)`` as the engine left them on its device: rows of one piece."""

    __slots__ = ()

    def __init__(self, value: Value, rows: int) -> None:
        super().__init__(rows)
        self.pieces.append((0, rows, value, 0))

    @property
    def value(self) -> Value:
        return self.pieces[0][2]


def kit_options(device_id: int) -> dict[str, str]:
    """CUDA options of the kit's sessions: running sums are large and few, so the arena grows by
    what is asked (the default doubles: a 1 GB sum could reserve 2)."""
    return {"device_id": str(device_id), "arena_extend_strategy": "kSameAsRequested",
            "do_copy_in_default_stream": "1"}


class DeviceKit:
    """The stitch graphs as ONNX Runtime sessions on ``provider`` (CUDA or CPU), device ``device_id``."""

    def __init__(self, provider: str, device_id: int = 0, *, intra_op_threads: int = 1) -> None:
        self.provider = provider
        self.device_id = device_id
        #: where values stay: ONNX Runtime's device name
        self.device = "cuda" if provider == CUDA else "cpu"
        providers: list[Any] = [(CUDA, kit_options(device_id)), "CPUExecutionProvider"] if provider == CUDA \
            else ["CPUExecutionProvider"]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = intra_op_threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        folder = resources.files("service.engine") / "graphs"
        self._sessions = {name: ort.InferenceSession((folder / f"{name}.onnx").read_bytes(), sess_options=so,
                                                     providers=providers) for name in GRAPH_NAMES}
        self._output = {name: s.get_outputs()[0].name for name, s in self._sessions.items()}  # one each
        ran_on = {str(s.get_providers()[0]) for s in self._sessions.values()}
        if ran_on != {provider}:
            raise RuntimeError(f"the stitch graphs came up on {', '.join(sorted(ran_on))}, not {provider}")
        # one zero on the device for every running sum's start: graphs never write their inputs
        self._zero = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 1, 1), np.float32), self.device, device_id)

    def run(self, graph: str, feed: Feed, *, to_host: bool = False) -> Value:
        """Run ``graph`` on ``feed`` (values where they are, numpy arrays from the host); its one output,
        left on the device (an OrtValue) or, with ``to_host``, as a numpy array."""
        session = self._sessions[graph]
        binding = session.io_binding()  # one per call: sessions are shared by threads, bindings not
        for name, value in feed.items():
            if isinstance(value, np.ndarray):
                # np.require, not ascontiguousarray: that makes a 0-d count or class index 1-d
                binding.bind_cpu_input(name, np.require(value, requirements="C"))
            else:
                binding.bind_ortvalue_input(name, value)
        out = self._output[graph]
        if to_host:
            binding.bind_output(out, "cpu")
        else:
            binding.bind_output(out, self.device, self.device_id)
        session.run_with_iobinding(binding)
        value = binding.get_outputs()[0]
        return value.numpy() if to_host else value

    def zero(self) -> Value:
        """A running sum's start: one zero, which every graph's Add broadcasts (shared, never written)."""
        return self._zero

    def tile_logits(self, raw: Value, dtype: str, align_corners: bool,
                    size: tuple[int, int, int, int]) -> Value:
        """A described model's raw logits (strided, or float16) as float32 logits at the tile."""
        graph = f"tile_logits_{dtype}_{'align_corners' if align_corners else 'half_pixel'}"
        return self.run(graph, {"raw": raw, "size": np.array(size, dtype=np.int64)})

    def warmup(self, classes: int, tile: tuple[int, int]) -> None:
        """Run every graph once on small sizes: the first run of each pays for its kernels."""
        th, tw = tile
        logits = ort.OrtValue.ortvalue_from_numpy(np.zeros((2, classes, th, tw), np.float32), self.device,
                                                  self.device_id)
        crop, pads = np.array([0, 0, th, tw], np.int64), np.zeros(6, np.int64)
        total = self.run("window", {"logits": logits, "index": np.array([0]), "crop": crop, "pads": pads,
                                    "total": self.zero()})
        total = self.run("window_flip", {"logits": logits, "index": np.array([0]), "mirror_logits": logits,
                                         "mirror_index": np.array([1]), "crop": crop, "pads": pads,
                                         "total": total})
        total = self.run("fold", {"scale_sum": total, "cover": np.ones((th, tw), np.float32),
                                  "total": self.zero(), "size": np.array([1, classes, th, tw], np.int64)})
        count = np.array(1.0, np.float32)
        self.run("labels_uint8" if classes <= 256 else "labels_uint16", {"total": total}, to_host=True)
        self.run("confidence", {"total": total, "count": count}, to_host=True)
        self.run("probability", {"total": total, "class_index": np.array(0, np.int64), "count": count},
                 to_host=True)
        self.run("probabilities", {"total": total, "count": count}, to_host=True)


def kit_for(choice: DeviceStitchChoice, provider: str, device_id: int, *, name: str, has_logits: bool,
            one_by_one: bool) -> DeviceKit | None:
    """The stitch graphs' kit for an engine on ``provider`` serving model ``name``: "on" anywhere,
    "auto" on CUDA; never for a model without logits, or one that takes a fixed batch of 1 (its
    tiles' logits come in separate values); None, with a warning, when the graphs do not load."""
    if choice not in ("auto", "on", "off"):
        raise ValueError(f"device_stitch must be auto, on or off, not {choice!r}")
    if choice == "off" or (choice == "auto" and provider != CUDA):
        return None
    why = "it gives labels only" if not has_logits else "it takes a fixed batch of 1" if one_by_one else None
    if why:
        log.info("engine: %s is stitched on the host: %s", name, why)
        return None
    try:
        kit = DeviceKit(provider, device_id)
    except Exception as e:  # ORT raises its own types; the host stitch serves regardless
        log.warning("engine: %s is stitched on the host: the stitch graphs did not load on %s: %s",
                    name, provider, e)
        return None
    log.info("engine: %s is stitched on %s (its logits stay there)", name, kit.device)
    if provider != CUDA:  # ORT's float32 CPU kernels: about 4x the host stitch's CPU (BENCHMARKS.md)
        log.warning("engine: the device stitch on %s is slower than the exact host stitch: for tests",
                    provider)
    return kit


class DeviceBudget:
    """Bytes of the device the stitches of the server may hold at once; a request that does not fit
    now is stitched on the host instead (never queued: the host road is always there).

    ``shared``: with ``--workers N`` every worker's stitches in one slots file
    (service/engine/held.py), so the limit is the whole server's, checked and taken under its lock.
    """

    def __init__(self, limit_bytes: int, shared: SharedHeld | None = None) -> None:
        self.limit = limit_bytes
        self.held = 0  # this process's
        self.declined = 0  # requests sent to the host road for want of room
        self._shared = shared
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> bool:
        with self._lock:
            ok = (self.held + nbytes <= self.limit if self._shared is None
                  else self._shared.take(nbytes, self.limit)[0])
            if not ok:
                self.declined += 1
                return False
            self.held += nbytes
            return True

    def give(self, nbytes: int) -> None:
        with self._lock:
            self.held -= nbytes
            if self._shared is not None:
                self._shared.give(nbytes)
