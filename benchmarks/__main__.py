"""``python -m benchmarks COMMAND [ARGS]``: every benchmark behind one entry point.

Each command is a module of this package run as a script (its own flags: ``COMMAND --help``);
modules are imported only when run, so a command's heavy imports (torch, litserve) cost nothing
to the others. The GPU check is a shell script: ``bash benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import runpy
import sys

COMMANDS = {
    "load": "benchmarks.load.cli",
    "suite": "benchmarks.speed.suite",
    "report": "benchmarks.speed.report",
    "ort-limit": "benchmarks.speed.ort_limit",
    "naive-server": "benchmarks.speed.naive_server",
    "litserve-server": "benchmarks.speed.litserve_server",
    "protocol": "benchmarks.speed.protocol",
    "layout": "benchmarks.speed.layout",
    "codecs": "benchmarks.speed.image_codecs",
    "bulk": "benchmarks.speed.bulk",
    "oip": "benchmarks.speed.oip",
    "large-image": "benchmarks.speed.large_image",
    "feed-gpu": "benchmarks.speed.feed_gpu",
    "served-sweep": "benchmarks.speed.served_sweep",
    "labels-output": "benchmarks.speed.labels_output",
    "png-levels": "benchmarks.speed.png_levels",
    "overload": "benchmarks.reliability.overload",
    "memory": "benchmarks.reliability.memory",
    "stitch-agreement": "benchmarks.accuracy.stitch_agreement",
    "int8-isa": "benchmarks.accuracy.int8_isa",
    "official-check": "benchmarks.accuracy.official_check",
    "soft-outputs": "benchmarks.speed.soft_outputs",
    "device-stitch": "benchmarks.speed.device_stitch",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m benchmarks COMMAND [ARGS]\ncommands: " + ", ".join(COMMANDS), file=sys.stderr)
        return 2
    sys.argv = [f"python -m benchmarks {argv[0]}", *argv[1:]]
    try:
        runpy.run_module(COMMANDS[argv[0]], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
