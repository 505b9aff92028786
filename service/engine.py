"""ONNX Runtime session for one artifact: provider choice, IO binding, warm-up.

The engine knows nothing of requests or batching: it runs batches of at most
``max_batch`` same-shape tiles, ``(N, 3, H, W)`` float32 in, ``(N, C, H, W)``
float32 logits out. The batcher calls :meth:`Engine.run` from one worker
thread; the offline commands call it directly.

Provider policy (DESIGN.md "Service", CUDA):
- ``"cpu"``: CPU, nothing else is tried.
- ``"auto"``: CUDA when this onnxruntime build has it, else CPU (no warning:
  a CPU-only install on a laptop is the expected case).
- ``"cuda"``: CUDA; if it is missing or fails to start, a WARNING and CPU.
Whenever CUDA was tried and CPU is what runs, :attr:`Engine.fallback_reason`
says why and readiness reports it. :attr:`Engine.provider` is read back from
the session after creation, never taken from the request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from service.artifact import INPUT_NAME, OUTPUT_NAME, ArtifactError, ArtifactMeta, read_meta

log = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "cuda", "cpu"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
Tiles = npt.NDArray[np.float32]


def cuda_options(device_id: int) -> dict[str, str]:
    """CUDA provider options. Values are strings: ORT parses them itself."""
    return {
        "device_id": str(device_id),
        # Exhaustive search benchmarks every conv algorithm for every new input shape, i.e.
        # once per batch size: seconds of warm-up each and a memory spike. The heuristic pick
        # costs nothing and every shape is fixed anyway.
        "cudnn_conv_algo_search": "HEURISTIC",
        # Host<->device copies on the compute stream: they are ordered with the kernels, so IO
        # binding needs no extra synchronisation.
        "do_copy_in_default_stream": "1",
        # Let cuDNN use as much workspace as the fastest algorithm wants.
        "cudnn_conv_use_max_workspace": "1",
    }


def session_options(intra_op_threads: int, inter_op_threads: int, *,
                    spin: bool = False) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads > 0:  # 0 keeps ORT's default: one thread per physical core
        so.intra_op_num_threads = intra_op_threads
    # ORT's intra-op threads busy-wait for work by default. In a server they share the
    # cores with decode, stitch, encode and HTTP, and a thread spinning between (or after)
    # runs takes the CPU those need; a preempted peer makes it spin longer still. Measured
    # on the 2-core benchmark machine, default CamVid model, mode=whole (BENCHMARKS.md):
    # without spinning the server used 240-264 ms of CPU per request instead of 248-335,
    # and p99 at concurrency 1 was 167-204 ms instead of 240-280.
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if inter_op_threads > 0:
        so.inter_op_num_threads = inter_op_threads
    # Independent branches (the four pyramid-pooling bins) can only run concurrently in
    # parallel mode; asking for more than one inter-op thread means asking for that.
    so.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if inter_op_threads > 1
                         else ort.ExecutionMode.ORT_SEQUENTIAL)
    return so


class Engine:
    """One ONNX Runtime session for one artifact; :meth:`run` is serialised by a lock."""

    def __init__(self, path: Path, *, provider: ProviderChoice = "auto", intra_op_threads: int = 0,
                 inter_op_threads: int = 0, max_batch: int = 8, device_id: int = 0,
                 spin: bool = False) -> None:
        if provider not in ("auto", "cuda", "cpu"):
            raise ValueError(f"provider must be auto, cuda or cpu, not {provider!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.path = path
        self.meta: ArtifactMeta = read_meta(path)
        self.max_batch = max_batch
        self.requested_provider: ProviderChoice = provider
        self.fallback_reason: str | None = None
        self.warmup_seconds: float | None = None
        self.ready = False
        self._lock = threading.Lock()
        self._cuda_attempted = False
        so = session_options(intra_op_threads, inter_op_threads, spin=spin)
        self._session = self._create_session(provider, so, device_id)
        # The truth, whatever was asked: ORT may have dropped a provider it could not start.
        self.provider: str = str(self._session.get_providers()[0])
        if self.provider != CUDA and self._cuda_attempted and not self.fallback_reason:
            self.fallback_reason = (f"{CUDA} did not start (see the onnxruntime log above); "
                                    f"running on {self.provider}")
        if self.fallback_reason:
            log.warning("CUDA FALLBACK: %s", self.fallback_reason)
        self._check_output()
        self._binding: Any = self._session.io_binding() if self.provider == CUDA else None
        log.info("engine: %s on %s (requested %s), tile %s, %d classes, max batch %d", path.name,
                 self.provider, provider, self.meta.tile, self.meta.num_classes, max_batch)

    @property
    def tile(self) -> tuple[int, int]:
        return self.meta.tile

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    def _create_session(self, provider: ProviderChoice, so: ort.SessionOptions, device_id: int) -> Any:
        available = ort.get_available_providers()
        self._cuda_attempted = provider != "cpu" and CUDA in available
        if provider == "cuda" and CUDA not in available:
            self.fallback_reason = (f"{CUDA} was requested but this onnxruntime build offers only "
                                    f"{', '.join(available)} (install the gpu extra, onnxruntime-gpu)")
        if self._cuda_attempted:
            try:
                return self._session_with([(CUDA, cuda_options(device_id)), CPU], so)
            except Exception as e:  # ORT raises RuntimeError/ValueError/its own Fail types
                self.fallback_reason = f"{CUDA} failed to start: {e}"
        return self._session_with([CPU], so)

    def _session_with(self, providers: list[Any], so: ort.SessionOptions) -> Any:
        session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        # ORT's own fallback prints to stdout and, on a failed run, silently moves the session
        # to CPU for good; we decide fallbacks here, once, and log them properly.
        if hasattr(session, "disable_fallback"):
            session.disable_fallback()
        return session

    def _check_output(self) -> None:
        outs = {o.name: o.shape for o in self._session.get_outputs()}
        shape = outs.get(OUTPUT_NAME)
        if shape is None:
            raise ArtifactError(f"{self.path} has no output {OUTPUT_NAME!r}")
        channels = shape[1] if len(shape) == 4 else None
        if isinstance(channels, int) and channels != self.meta.num_classes:
            raise ArtifactError(f"{self.path}: {OUTPUT_NAME!r} has {channels} channels but the metadata "
                                f"names {self.meta.num_classes} classes")

    def _check_input(self, tiles: Tiles) -> None:
        h, w = self.meta.tile
        if not isinstance(tiles, np.ndarray) or tiles.dtype != np.float32:
            raise TypeError("tiles must be a float32 numpy array")
        if tiles.ndim != 4 or tiles.shape[1:] != (3, h, w):
            raise ValueError(f"tiles must be (N, 3, {h}, {w}), got {tiles.shape}")
        if not 1 <= tiles.shape[0] <= self.max_batch:
            raise ValueError(f"batch of {tiles.shape[0]} tiles; this engine runs 1..{self.max_batch}")

    def run(self, tiles: Tiles) -> Tiles:
        """Logits ``(N, C, H, W)`` for ``tiles`` ``(N, 3, H, W)``, ``1 <= N <= max_batch``."""
        self._check_input(tiles)
        tiles = np.ascontiguousarray(tiles)
        with self._lock:
            if self._binding is None:
                out = self._session.run([OUTPUT_NAME], {INPUT_NAME: tiles})[0]
                return np.asarray(out, dtype=np.float32)
            return self._run_bound(tiles)

    def _run_bound(self, tiles: Tiles) -> Tiles:
        # IO binding: ORT copies the input host->device and writes the logits straight into
        # our host buffer, one copy each way, with device memory from its arena (no per-call
        # cudaMalloc once warm). The host output is fresh per call because callers keep it.
        n, _, h, w = tiles.shape
        out = np.empty((n, self.meta.num_classes, h, w), dtype=np.float32)
        b = self._binding
        b.bind_cpu_input(INPUT_NAME, tiles)
        b.bind_output(OUTPUT_NAME, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        self._session.run_with_iobinding(b)
        return out

    def warmup(self, batch_sizes: Iterable[int] | None = None) -> float:
        """Run every batch size once (default 1..max_batch) and mark the engine ready.

        The first run of a shape pays for memory planning and, on CUDA, kernel and
        algorithm selection; doing it here keeps that out of every request's latency.
        Returns (and records) the seconds it took.
        """
        sizes = sorted(set(batch_sizes)) if batch_sizes is not None else list(range(1, self.max_batch + 1))
        if any(not 1 <= n <= self.max_batch for n in sizes):
            raise ValueError(f"warm-up batch sizes must be within 1..{self.max_batch}, got {sizes}")
        h, w = self.meta.tile
        grey = np.full((max(sizes, default=1), 3, h, w), 128.0, dtype=np.float32)
        t0 = time.perf_counter()
        for n in sizes:
            self.run(grey[:n])
        self.warmup_seconds = time.perf_counter() - t0
        self.ready = True
        log.info("engine warm: batch sizes %s in %.2f s on %s", sizes, self.warmup_seconds, self.provider)
        return self.warmup_seconds

    def describe(self) -> dict[str, Any]:
        """What readiness and the models endpoint report about the runtime."""
        return {"provider": self.provider, "requested_provider": self.requested_provider,
                "fallback_reason": self.fallback_reason, "ready": self.ready,
                "max_batch": self.max_batch, "warmup_seconds": self.warmup_seconds}
