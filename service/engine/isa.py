"""Whether an int8 artifact holds on this CPU: full-range int8 weights need VNNI.

ONNX Runtime's int8 kernels for uint8 activations and int8 weights (U8S8) sum pairs of
products in saturating int16 on x86-64 CPUs without VNNI (AVX2's vpmaddubsw): weights in
the full int8 range overflow it, and the logits come out far from float32 (a max error of
2.4 on logits up to 12 on the test model; weights/README.md, "int8 on CPUs without VNNI").
``pspnet-model quantize`` writes weights in a 7-bit range (``reduce_range``), exact on every
CPU; an artifact quantised before that, or by other tools with full-range int8 weights,
is only right on a CPU with VNNI. :func:`int8_warning` says so at load, in words.

Tested by tests/service/engine/test_isa.py.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from service.contract.artifact import ArtifactMeta

#: /proc/cpuinfo flags of the int8 dot-product instructions ONNX Runtime's int8 kernels use
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The CPU's feature flags (Linux x86), or None where they cannot be read."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def int8_warning(meta: ArtifactMeta, flags: Collection[str] | None) -> str | None:
    """Why this artifact's int8 logits may be wrong on a CPU with ``flags``; None when they hold
    (a float artifact, 7-bit or unsigned weights, a CPU with VNNI, or flags unknown)."""
    q = meta.source.get("quantization")
    if not isinstance(q, dict) or flags is None or VNNI_FLAGS & set(flags):
        return None
    if q.get("reduce_range") is True or q.get("weight_type", "int8") != "int8":
        return None
    return (f"model {meta.name!r} has int8 weights in the full 8-bit range and this CPU has no VNNI: "
            f"ONNX Runtime's int8 kernels saturate here and its logits can be far from the float32 "
            f"model's. Quantise it again with this version's `pspnet-model quantize` (7-bit weights, "
            f"exact on every CPU), or serve the float32 artifact")
