"""The engine's cores, threads, CUDA driver probe, and ONNX Runtime session and provider options
(service/engine/sessions.py).

Tested by tests/service/engine/test_sessions.py, tests/service/engine/test_sessions_spin.py and
tests/deploy/test_gpu_fallback.py.
"""

from __future__ import annotations

import ctypes
import os
import sys

import onnxruntime as ort


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one; not a cgroup quota)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def intra_op_threads_for(setting: int, sessions: int, cores: int | None = None) -> int:
    """Intra-op threads for each of ``sessions`` sessions; ``0`` is ONNX Runtime's own default.

    A positive ``setting`` is taken as it is (per session). ``0`` (auto) keeps ORT's default, one
    thread per physical core, when there is one session, and gives each of several sessions
    ``cores // sessions`` threads (at least 1), so that together they do not oversubscribe the cores.
    """
    if setting < 0 or sessions < 1:
        raise ValueError(f"need intra-op threads >= 0 and sessions >= 1, not {setting} and {sessions}")
    if setting > 0 or sessions == 1:
        return setting
    return max(1, (cores if cores is not None else usable_cores()) // sessions)


def cuda_driver_error() -> str | None:
    """Why the NVIDIA driver's ``libcuda.so.1`` does not load, or None (it does, or not Linux).

    The CUDA provider links it; every other CUDA library comes with the install (the GPU image's
    wheels), this one only with a GPU: the host's driver, mounted by the NVIDIA Container Toolkit.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return str(e)
    return None


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
