"""ONNX Runtime sessions for one artifact: provider choice, IO binding, warm-up.

The engine knows nothing of requests or batching: it runs batches of at most
``max_batch`` same-shape tiles, ``(N, 3, H, W)`` float32 in, and returns the
outputs asked for: :meth:`Engine.run` the ``(N, C, H, W)`` float32 logits,
:meth:`Engine.run_outputs` any of :attr:`Engine.outputs` (``labels``
``(N, H, W)`` uint8/uint16 when the artifact has it: on a GPU a labels-only
batch copies one byte a pixel back to the host instead of 4 x classes).
A model described by a file beside it (service/contract/description.py) runs
through a :class:`service.engine.adapt.GraphAdapter`: same tiles in, same
logits (or, for a labels-only graph, ``outputs == ("labels",)``) out.

Execution layout: ``sessions`` ONNX Runtime sessions of the same artifact, each
with its own lock (and IO binding), so that as many batches can run at once;
:meth:`Engine.runners` gives the batcher one runner per session. Intra-op
threads ``0`` (auto) means ORT's own default with one session, else the cores
this process may use divided among the sessions (:func:`intra_op_threads_for`).
The offline commands run session 0 through :class:`service.offline.pool.TilePool` or
:class:`service.pipeline.runner.EngineRunner`.

Provider policy (docs/DESIGN.md "Service", CUDA):
- ``"cpu"``: CPU, nothing else is tried.
- ``"auto"``: CUDA when this onnxruntime build has it, else CPU (no warning:
  a CPU-only install on a laptop is the expected case).
- ``"cuda"``: CUDA; if it is missing or fails to start, a WARNING and CPU.
Whenever CUDA was tried and CPU is what runs, :attr:`Engine.fallback_reason`
says why and readiness reports it (naming the driver's libcuda.so.1 when that
is what is missing: a container started without a GPU). :attr:`Engine.provider`
is read back from the session after creation, never taken from the request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from service.contract.artifact import INPUT_NAME, LABELS_NAME, OUTPUT_NAME, ArtifactError, Tiles, label_dtype
from service.contract.description import ARTIFACT_CALL, read_description
from service.engine.adapt import GraphAdapter
from service.engine.device_kit import DEVICE_LOGITS, DeviceBatch, DeviceStitchChoice, kit_for
from service.engine.host_buffers import HostBuffers
from service.engine.isa import cpu_flags, int8_warning
from service.engine.options import cuda_driver_error, cuda_options, intra_op_threads_for, session_options

log = logging.getLogger("service.engine")  # the name log lines had

ProviderChoice = Literal["auto", "cuda", "cpu"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: the outputs of the artifact contract the engine can fetch, in the order it lists them
KNOWN_OUTPUTS = (OUTPUT_NAME, LABELS_NAME)
#: numpy dtype of each ONNX Runtime tensor type an output of the contract may have
_ORT_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16}


#: on CPU, a batch whose outputs exceed this lands in buffers of ours rather than ONNX Runtime's
#: arena (Engine._run_bound); below it ORT's warm arena is faster (no fresh pages: 7% of a CamVid
#: batch of 4 on the 2-core machine) and holds little
OWN_OUTPUT_BYTES = 2**26


@dataclass
class _Session:
    """One ONNX Runtime session of the engine, its IO binding and the lock that serialises it."""

    session: Any
    binding: Any
    lock: threading.Lock
    buffers: HostBuffers | None = None  # on CUDA: the host buffers its outputs are copied into, reused

    def bind_to_host(self, name: str, shape: tuple[int, ...], dtype: type[np.generic]) -> npt.NDArray[Any]:
        """A host buffer for output ``name`` (reused on CUDA, fresh elsewhere), bound to it."""
        buf = np.empty(shape, dtype=dtype) if self.buffers is None else self.buffers.take(shape, dtype)
        self.binding.bind_output(name, "cpu", 0, buf.dtype.type, list(buf.shape), buf.ctypes.data)
        return buf


class Engine:
    """``sessions`` ONNX Runtime sessions of one artifact; each one runs one batch at a time."""

    def __init__(self, path: Path, *, provider: ProviderChoice = "auto", intra_op_threads: int = 0,
                 inter_op_threads: int = 0, max_batch: int = 8, device_id: int = 0,
                 spin: bool = False, sessions: int = 1, device_stitch: DeviceStitchChoice = "off") -> None:
        if provider not in ("auto", "cuda", "cpu"):
            raise ValueError(f"provider must be auto, cuda or cpu, not {provider!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if sessions < 1:
            raise ValueError(f"sessions must be at least 1, not {sessions}")
        self.path = path
        self.description = read_description(path)
        self.meta = self.description.meta
        call = self.description.call
        self._adapter = None if call == ARTIFACT_CALL else GraphAdapter(
            self.meta, call, self.description.labels_dtype)
        self.max_batch = max_batch
        self.fallback_reason: str | None = None
        self.warmup_seconds: float | None = None  # set by warmup()
        self._cuda_attempted = False
        self.intra_op_threads = intra_op_threads_for(intra_op_threads, sessions)
        so = session_options(self.intra_op_threads, inter_op_threads, spin=spin)
        first = self._create_session(provider, so, device_id)
        # The truth, whatever was asked: ORT may have dropped a provider it could not start.
        self.provider: str = str(first.get_providers()[0])
        if self.provider != CUDA and self._cuda_attempted and not self.fallback_reason:
            driver = cuda_driver_error()
            cause = (f"the NVIDIA driver does not load: {driver}; no GPU is visible here" if driver
                     else "see the onnxruntime log above")
            self.fallback_reason = f"{CUDA} did not start ({cause}); running on {self.provider}"
        if self.fallback_reason:
            log.warning("CUDA FALLBACK: %s", self.fallback_reason)
        int8 = int8_warning(self.meta, cpu_flags()) if self.provider == CPU else None
        if int8:
            log.warning("INT8 ON A CPU WITHOUT VNNI: %s", int8)
        self._dtypes = self._check_outputs(first) if self._adapter is None else self._adapter.check(first)
        #: the contract's outputs this artifact has, e.g. ("logits",) or ("logits", "labels")
        self.outputs: tuple[str, ...] = tuple(self._dtypes)
        # Every further session on what the first one runs on: the fallback is decided once.
        providers: list[Any] = [(CUDA, cuda_options(device_id)), CPU] if self.provider == CUDA else [CPU]
        made = [first]
        for i in range(1, sessions):
            s = self._session_with(providers, so)
            if str(s.get_providers()[0]) != self.provider:
                raise RuntimeError(f"session {i} of {path.name} came up on {s.get_providers()[0]}, "
                                   f"session 0 on {self.provider}")
            made.append(s)
        self._sessions = [_Session(s, s.io_binding(), threading.Lock(),
                                   HostBuffers() if self.provider == CUDA else None) for s in made]
        #: the stitch graphs on this engine's device, when batches may leave logits there
        self.device_kit = kit_for(device_stitch, self.provider, device_id, name=path.name,
                                  has_logits=OUTPUT_NAME in self.outputs,
                                  one_by_one=self._adapter is not None and self._adapter.call.batch == 1)
        log.info("engine: %s on %s (requested %s), tile %s, %d classes, outputs %s, max batch %d, "
                 "%d session(s) x %s intra-op threads", path.name, self.provider, provider, self.meta.tile,
                 self.meta.num_classes, ", ".join(self.outputs), max_batch, sessions,
                 self.intra_op_threads or "default")
        if call.batch == 1:
            log.info("engine: %s takes a fixed batch of 1: its tiles run one at a time", path.name)

    @property
    def run_names(self) -> tuple[str, ...]:
        """What :meth:`run_outputs` fetches: :attr:`outputs`, and :data:`DEVICE_LOGITS` with a kit."""
        return self.outputs + ((DEVICE_LOGITS,) if self.device_kit is not None else ())

    @property
    def tile(self) -> tuple[int, int]:
        return self.meta.tile

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def runners(self) -> list[SessionRunner]:
        """One runner per session, for :class:`service.engine.batcher.TileBatcher` (one worker each)."""
        return [SessionRunner(self, i) for i in range(self.sessions)]

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

    def _check_outputs(self, session: Any) -> dict[str, type[np.generic]]:
        """The contract's outputs the session has, with their dtypes, checked against the metadata."""
        outs = {o.name: o for o in session.get_outputs()}
        logits = outs.get(OUTPUT_NAME)
        if logits is None:
            raise ArtifactError(f"{self.path} has no output {OUTPUT_NAME!r}")
        channels = logits.shape[1] if len(logits.shape) == 4 else None
        if isinstance(channels, int) and channels != self.meta.num_classes:
            raise ArtifactError(f"{self.path}: {OUTPUT_NAME!r} has {channels} channels but the metadata "
                                f"names {self.meta.num_classes} classes")
        want = {OUTPUT_NAME: np.float32, LABELS_NAME: label_dtype(self.meta.num_classes)}
        dtypes: dict[str, type[np.generic]] = {}
        for name in KNOWN_OUTPUTS:
            if name not in outs:
                continue
            dtype = _ORT_DTYPES.get(outs[name].type)
            if dtype is not want[name]:
                raise ArtifactError(f"{self.path}: output {name!r} is {outs[name].type}, expected "
                                    f"{np.dtype(want[name]).name}")
            dtypes[name] = dtype
        return dtypes

    def _check_input(self, tiles: Tiles) -> None:
        h, w = self.meta.tile
        if not isinstance(tiles, np.ndarray) or tiles.dtype != np.float32:
            raise TypeError("tiles must be a float32 numpy array")
        if tiles.ndim != 4 or tiles.shape[1:] != (3, h, w):
            raise ValueError(f"tiles must be (N, 3, {h}, {w}), got {tiles.shape}")
        if not 1 <= tiles.shape[0] <= self.max_batch:
            raise ValueError(f"batch of {tiles.shape[0]} tiles; this engine runs 1..{self.max_batch}")

    def _check_names(self, names: Sequence[str]) -> tuple[str, ...]:
        wanted = tuple(names)
        if isinstance(names, str) or not wanted or len(set(wanted)) != len(wanted):
            raise ValueError(f"name one or more distinct outputs, not {names!r}")
        missing = [n for n in wanted if n not in self.run_names]
        if missing:
            raise ValueError(f"{self.path.name} has no output {', '.join(map(repr, missing))}; "
                             f"it has {', '.join(self.run_names)}")
        return wanted

    def _slot(self, session: int) -> _Session:
        if not 0 <= session < len(self._sessions):
            raise ValueError(f"session {session}: this engine has sessions 0..{len(self._sessions) - 1}")
        return self._sessions[session]

    def run(self, tiles: Tiles, *, session: int = 0) -> Tiles:
        """Logits ``(N, C, H, W)`` for ``tiles`` ``(N, 3, H, W)``, ``1 <= N <= max_batch``."""
        logits: Tiles = self.run_outputs(tiles, (OUTPUT_NAME,), session=session)[OUTPUT_NAME]
        return logits

    def run_outputs(self, tiles: Tiles, names: Sequence[str], *,
                    session: int = 0) -> dict[str, npt.NDArray[Any]]:
        """The outputs ``names`` (of :attr:`outputs`) for ``tiles``, on session ``session``.

        Only those outputs are fetched: ``logits`` ``(N, C, H, W)`` float32, ``labels``
        ``(N, H, W)`` uint8 (uint16 beyond 256 classes). Every call returns arrays nobody else
        holds (on CUDA, buffers of :mod:`service.engine.host_buffers` reused once unreferenced).
        With a device kit, :data:`DEVICE_LOGITS`: the logits left on the device, a
        :class:`~service.engine.device_kit.DeviceBatch`.
        """
        wanted = self._check_names(names)
        self._check_input(tiles)
        slot = self._slot(session)
        tiles = np.ascontiguousarray(tiles)
        with slot.lock:
            if DEVICE_LOGITS in wanted:
                return self._run_device(slot, tiles, wanted)
            if self._adapter is not None:  # a described graph: converted both ways, one output
                return {self._adapter.output: self._adapter.run(slot.session, tiles)}
            if self.provider != CUDA and self._output_bytes(tiles, wanted) <= OWN_OUTPUT_BYTES:
                outs = slot.session.run(list(wanted), {INPUT_NAME: tiles})
                return {n: np.asarray(o, dtype=self._dtypes[n]) for n, o in zip(wanted, outs, strict=True)}
            return self._run_bound(slot, tiles, wanted)

    def _output_bytes(self, tiles: Tiles, names: tuple[str, ...]) -> int:
        n, _, h, w = tiles.shape
        per_pixel = {OUTPUT_NAME: self.meta.num_classes * 4, LABELS_NAME: np.dtype(self._dtypes.get(
            LABELS_NAME, np.uint8)).itemsize}
        return sum(n * h * w * per_pixel[name] for name in names)

    def _run_bound(self, slot: _Session, tiles: Tiles, names: tuple[str, ...]) -> dict[str, npt.NDArray[Any]]:
        # IO binding: ORT copies the input host->device and writes each bound output straight into
        # our host buffer, one copy each way, with device memory from its arena (no per-call
        # cudaMalloc once warm). Only the outputs asked for are bound, so only they come down (labels
        # alone: one byte per pixel instead of 4 x classes). Callers keep the host buffers: on CUDA
        # each is lent again once no view of it is alive (host_buffers.py: fresh pages made the copy
        # slow). On CPU, large outputs take this road too, into fresh buffers: ORT's own outputs come
        # from its arena, which keeps every byte it ever handed out (a request holding 40 tiles of
        # 150-class logits grew it by 5 GB for good); ours go back to the system when dropped.
        n, _, h, w = tiles.shape
        shapes = {OUTPUT_NAME: (n, self.meta.num_classes, h, w), LABELS_NAME: (n, h, w)}
        b = slot.binding
        b.bind_cpu_input(INPUT_NAME, tiles)
        b.clear_binding_outputs()  # outputs bound by an earlier call must not come down again
        out = {name: slot.bind_to_host(name, shapes[name], self._dtypes[name]) for name in names}
        slot.session.run_with_iobinding(b)
        return out

    def _run_device(self, slot: _Session, tiles: Tiles, names: tuple[str, ...]) -> dict[str, Any]:
        """A batch whose logits stay on the device (:meth:`_run_bound`'s binding, the logits output
        bound to the device): a described model's strided or float16 logits are made the tile's
        float32 logits there too. Host logits, when also asked for, are a copy of the same value."""
        kit = self.device_kit
        assert kit is not None
        n, _, h, w = tiles.shape
        adapter = self._adapter
        b = slot.binding
        if adapter is None:
            b.bind_cpu_input(INPUT_NAME, tiles)
        else:
            b.bind_cpu_input(adapter.call.input_name, adapter.model_input(tiles))
        b.clear_binding_outputs()
        b.bind_output(OUTPUT_NAME if adapter is None else adapter.call.output_name, kit.device, kit.device_id)
        out: dict[str, Any] = {}
        if LABELS_NAME in names:
            out[LABELS_NAME] = slot.bind_to_host(LABELS_NAME, (n, h, w), self._dtypes[LABELS_NAME])
        slot.session.run_with_iobinding(b)
        value = b.get_outputs()[0]
        shape = tuple(value.shape())
        if len(shape) != 4 or shape[:2] != (n, self.meta.num_classes):
            raise ValueError(f"the model's logits are {shape}, expected ({n}, {self.meta.num_classes}, H, W)")
        if value.data_type() != "tensor(float)" or shape[2:] != (h, w):
            dtype = "float" if value.data_type() == "tensor(float)" else "float16"
            value = kit.tile_logits(value, dtype, self.meta.align_corners, (n, self.meta.num_classes, h, w))
        out[DEVICE_LOGITS] = DeviceBatch(value, n)
        if OUTPUT_NAME in names:
            out[OUTPUT_NAME] = value.numpy()
        return out

    def warmup(self, batch_sizes: Iterable[int] | None = None) -> float:
        """Run every batch size once (default 1..max_batch) on every session.

        The first run of a shape pays for memory planning and, on CUDA, kernel and
        algorithm selection; doing it here keeps that out of every request's latency.
        Sessions warm up at the same time, each in its own thread, fetching every set of outputs
        a batch may ask for (all of them, and each alone).
        Returns (and records) the seconds it took.
        """
        sizes = sorted(set(batch_sizes)) if batch_sizes is not None else list(range(1, self.max_batch + 1))
        if any(not 1 <= n <= self.max_batch for n in sizes):
            raise ValueError(f"warm-up batch sizes must be within 1..{self.max_batch}, got {sizes}")
        h, w = self.meta.tile
        grey = np.full((max(sizes, default=1), 3, h, w), 128.0, dtype=np.float32)

        # every set of outputs a batch may fetch: ONNX Runtime plans memory per set, and its arena
        # grew by 114 MB (CamVid, batch 4) on the first logits-only run after an all-outputs one
        fetches = [self.outputs] + ([(name,) for name in self.outputs] if len(self.outputs) > 1 else [])
        if self.device_kit is not None:
            fetches.append((DEVICE_LOGITS,))

        def warm(session: int) -> None:
            for n in sizes:
                for names in fetches:
                    self.run_outputs(grey[:n], names, session=session)

        t0 = time.perf_counter()
        if self.sessions == 1:
            warm(0)
        else:
            with ThreadPoolExecutor(self.sessions, thread_name_prefix="pspnet-warmup") as pool:
                list(pool.map(warm, range(self.sessions)))  # list(): re-raise a failure here
        if self.device_kit is not None:
            self.device_kit.warmup(self.meta.num_classes, self.meta.tile)
        self.warmup_seconds = time.perf_counter() - t0
        log.info("engine warm: batch sizes %s on %d session(s) in %.2f s on %s", sizes, self.sessions,
                 self.warmup_seconds, self.provider)
        return self.warmup_seconds


@dataclass(frozen=True)
class SessionRunner:
    """One session of an engine as a batcher runner: ``runner(tiles, names) -> {name: rows}``."""

    engine: Engine
    session: int

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.engine.run_names

    def __call__(self, tiles: Tiles, names: tuple[str, ...]) -> dict[str, npt.NDArray[Any]]:
        return self.engine.run_outputs(tiles, names, session=self.session)
