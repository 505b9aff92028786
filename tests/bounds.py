"""Numeric bounds that hold on every x86-64 CPU from AVX2 up, and the record of what each measured.

PyTorch, ONNX Runtime, NumPy and OpenCV pick their kernels by the CPU's instruction set
(AVX2, AVX-512, VNNI): another kernel sums in another order, so a float32 error measured on
one CPU is not a bound on another. Every bound checked through :func:`within` is the largest
error measured at each level those libraries dispatch to, just rounded up:

- ``native``: this CPU (the 2-core hosts have AVX-512 and VNNI);
- ``avx2-libs``: the same CPU with PyTorch, oneDNN, MKL and NumPy held to AVX2 by their own
  switches (ONNX Runtime has none);
- ``haswell``: QEMU's Haswell model (AVX2 and FMA, no AVX-512, no VNNI), where every library,
  ONNX Runtime included, sees an AVX2-only CPU (QEMU's soft float is exact IEEE).

``python scripts/measure_bounds.py`` runs the tests that use :func:`within` at each level and
prints the largest error of each name per level (its table is in docs/TESTING.md); the
comment beside each bound quotes it. Set ``PSPNET_ERROR_LOG`` to a file and every call
appends its measurement there as one JSON line.
"""

from __future__ import annotations

import json
import os


def _record(entry: dict[str, object]) -> None:
    log = os.environ.get("PSPNET_ERROR_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def within(name: str, error: float, bound: float) -> None:
    """Assert ``error <= bound``, recording ``error`` under ``name`` when a log is asked for."""
    error = float(error)
    _record({"name": name, "error": error, "bound": bound})
    assert error <= bound, f"{name}: measured {error:.3g} > bound {bound:.3g}"


def at_least(name: str, value: float, floor: float) -> None:
    """Assert ``value >= floor`` (an agreement, a share), recorded as :func:`within` records."""
    value = float(value)
    _record({"name": name, "value": value, "floor": floor})
    assert value >= floor, f"{name}: measured {value:.6g} < floor {floor:.6g}"
