"""``--version`` of ``pspnet-serve`` and ``pspnet-model``: this package's, ONNX Runtime's and Python's.

    pspnet-serve 0.1.0, ONNX Runtime 1.20.1 (onnxruntime-gpu), Python 3.11.7

The package version is the installed distribution's (``pspnet-serving``); run from a checkout
that is not installed, it is ``pyproject.toml``'s, marked ``(not installed)``. Nothing here needs
a GPU or imports torch: ONNX Runtime is imported (no session is made), torch's version, where
asked for, is read from its distribution's metadata.

Tested by tests/service/test_cli.py and tests/model/test_cli_version.py.
"""

from __future__ import annotations

import argparse
import platform
import tomllib
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

DISTRIBUTION = "pspnet-serving"
_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
_NOT_INSTALLED = " (not installed)"


def package_version() -> str:
    """This package's version: the installed distribution's, else the checkout's pyproject.toml's."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    try:
        project = tomllib.loads(_PYPROJECT.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return "unknown"
    if project.get("name") == DISTRIBUTION and isinstance(project.get("version"), str):
        return f"{project['version']}{_NOT_INSTALLED}"
    return "unknown"


def server_version() -> str:
    """The version the server reports (``/v2``, the OpenAPI document): :func:`package_version`
    without its ``(not installed)`` mark."""
    return package_version().removesuffix(_NOT_INSTALLED)


def onnxruntime_version() -> str:
    """``1.20.1 (onnxruntime-gpu)``: the version of the ONNX Runtime that imports, and its wheel."""
    try:
        import onnxruntime
    except Exception as e:  # not installed (no cpu/gpu extra), or a broken install
        if isinstance(e, ModuleNotFoundError) and e.name == "onnxruntime":
            return "not installed"
        return f"unusable ({type(e).__name__}: {e})"
    version = str(getattr(onnxruntime, "__version__", "unknown"))
    wheels = metadata.packages_distributions().get("onnxruntime", [])
    return f"{version} ({', '.join(sorted(set(wheels)))})" if wheels else version


def distribution_version(name: str) -> str:
    """An installed distribution's version from its metadata (nothing imported), or ``not installed``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def version_line(prog: str, extra: Sequence[str] = ()) -> str:
    """One line: the program and this package's version, then ONNX Runtime's, ``extra``'s, Python's."""
    parts = [f"{prog} {package_version()}", f"ONNX Runtime {onnxruntime_version()}"]
    parts += [f"{name} {distribution_version(name)}" for name in extra]
    parts.append(f"Python {platform.python_version()}")
    return ", ".join(parts)


class VersionAction(argparse.Action):
    """``--version``: print :func:`version_line` and exit 0; computed only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, extra: Sequence[str] = (),
                 help: str = "print the versions of this package, ONNX Runtime and Python, and exit") -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)
        self.extra = tuple(extra)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        print(version_line(parser.prog, self.extra))
        parser.exit(0)
