"""How many workers ``PSPNET_WORKERS=auto`` means: 1 on the CPU (ONNX Runtime's threads already use
every core); with CUDA, the cores this process may use, at most :data:`MAX_AUTO_WORKERS`.

The cores a process may use are its affinity mask, and fewer when a cgroup quota (a container's
CPU limit) allows less: cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``,
rounded up.

Tested by tests/service/workers/test_cores.py.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from service.settings import Settings

MAX_AUTO_WORKERS = 16
CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpus(root: Path = CGROUP) -> float | None:
    """The CPUs a cgroup quota allows (2.5 for "250000 100000"), or None when there is no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            q = int((v1 / "cpu.cfs_quota_us").read_text())
            p = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if q <= 0 or p <= 0 else q / p
    return None


def allowed_cores(root: Path = CGROUP) -> int:
    """The cores this process may run on: its affinity, bounded by the cgroup quota."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpus(root)
    return max(1, affinity if quota is None else min(affinity, math.ceil(quota)))


def cuda_usable() -> bool:
    """ONNX Runtime offers the CUDA provider and the driver loads (what ``provider=auto`` would take)."""
    import onnxruntime as ort

    from service.engine.options import cuda_driver_error
    from service.engine.sessions import CUDA

    return CUDA in ort.get_available_providers() and cuda_driver_error() is None


def resolve_workers(settings: Settings, *, cuda: bool | None = None, cores: int | None = None) -> int:
    """The worker processes ``settings`` asks for (``cuda``, ``cores``: the machine's, for tests)."""
    if settings.workers != "auto":
        return int(settings.workers)
    if settings.provider == "cpu" or not (cuda_usable() if cuda is None else cuda):
        return 1
    return min(MAX_AUTO_WORKERS, allowed_cores() if cores is None else cores)
