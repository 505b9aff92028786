"""Measure every bound of tests/bounds.py at each ISA level the libraries dispatch to.

    python -m tests.measure_bounds [--levels native,avx2-libs,haswell] [--out FILE.md]

Runs the test files that call ``within``/``at_least`` once per level, each with
``PSPNET_ERROR_LOG`` set, and prints one markdown table: per name, the bound and the
worst value measured at each level (a bound must sit above every column). The
``haswell`` level runs Python under ``qemu-x86_64 -cpu Haswell`` (Debian's ``qemu-user``):
slow (10-50x), and the only way to show ONNX Runtime an AVX2-only CPU on a host that has
AVX-512. Not a test: it takes tens of minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each library's own switch for the widest ISA it may dispatch to (ONNX Runtime has none).
AVX2_LIBS = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's vectorised kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # PyTorch's convolutions
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # PyTorch's matrix products
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # NumPy's ufuncs
    "OPENCV_CPU_DISABLE": "AVX512F",
}
LEVELS = ("native", "avx2-libs", "haswell")


def bounded_test_files() -> list[str]:
    """Every test module that checks a bound through tests.bounds."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "from tests.bounds import" in p.read_text(encoding="utf-8"))


def host_cpu() -> str:
    """The CPU's model name and the ISA flags that decide the kernels (Linux's /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.machine()
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in info.splitlines())}
    flags = set(fields.get("flags", "").split())
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{fields.get('model name', '?')} ({' '.join(isa)})"


def run_level(level: str, files: list[str], log: Path) -> int:
    env = {**os.environ, "PSPNET_ERROR_LOG": str(log)}
    python = [sys.executable]
    if level == "avx2-libs":
        env.update(AVX2_LIBS)
    elif level == "haswell":
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            raise SystemExit("the haswell level needs qemu-x86_64 (Debian: apt-get install qemu-user)")
        # -0 keeps argv[0], so a virtualenv's python still finds its site-packages
        python = [qemu, "-cpu", "Haswell", "-0", sys.executable, sys.executable]
    cmd = [*python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--timeout", "3600", *files]
    print(f"# {level}: {' '.join(cmd[-len(files) - 6:])}", file=sys.stderr, flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL).returncode


def worst(log: Path) -> dict[str, tuple[str, float, float]]:
    """name -> (kind, limit, worst value): the largest error, or the smallest agreement."""
    out: dict[str, tuple[str, float, float]] = {}
    if not log.exists():
        return out
    for line in log.read_text(encoding="utf-8").splitlines():
        e = json.loads(line)
        if "error" in e:
            kind, limit, value = "<=", e["bound"], e["error"]
            prev = out.get(e["name"], (kind, limit, value))[2]
            out[e["name"]] = (kind, limit, max(prev, value))
        else:
            kind, limit, value = ">=", e["floor"], e["value"]
            prev = out.get(e["name"], (kind, limit, value))[2]
            out[e["name"]] = (kind, limit, min(prev, value))
    return out


def table(results: dict[str, dict[str, tuple[str, float, float]]]) -> str:
    levels = list(results)
    names = sorted({n for r in results.values() for n in r})
    rows = [f"| name | bound | {' | '.join(levels)} |", "| --- | --- |" + " --- |" * len(levels)]
    for n in names:
        kind, limit = next((r[n][0], r[n][1]) for r in results.values() if n in r)
        cells = [f"{r[n][2]:.3g}" if n in r else "-" for r in results.values()]
        rows.append(f"| `{n}` | {kind} {limit:.3g} | {' | '.join(cells)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default=",".join(LEVELS))
    ap.add_argument("--files", nargs="*", help="test files (default: every one that uses tests.bounds)")
    ap.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = ap.parse_args(argv)
    files = args.files or bounded_test_files()
    results: dict[str, dict[str, tuple[str, float, float]]] = {}
    codes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.levels.split(","):
            if level not in LEVELS:
                ap.error(f"unknown level {level!r}; choose from {', '.join(LEVELS)}")
            log = Path(tmp) / f"{level}.jsonl"
            codes[level] = run_level(level, files, log)
            results[level] = worst(log)
    text = f"Host: {host_cpu()}; pytest exit codes {codes}\n\n{table(results)}\n"
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
