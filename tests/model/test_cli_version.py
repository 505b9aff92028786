"""``pspnet-model --version``: this package, ONNX Runtime, torch and Python versions, torch not imported."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import onnxruntime
import pytest

from model.cli import main

ROOT = Path(__file__).resolve().parents[2]

# in a process of its own: whether --version imported torch (this one has it from the conftest)
PROBE = """
import sys
from model.cli import main
try:
    main(["--version"])
except SystemExit as e:
    print("exit", e.code)
print("torch imported" if "torch" in sys.modules else "no torch")
"""


def test_version_names_the_package_onnxruntime_torch_and_python(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"pspnet-model {metadata.version('pspnet-serving')}, "
                           f"ONNX Runtime {onnxruntime.__version__} (")
    assert line.endswith(f", torch {metadata.version('torch')}, Python {platform.python_version()}")


def test_version_imports_no_torch_and_needs_no_gpu() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.splitlines()
    assert first.startswith("pspnet-model ") and ", ONNX Runtime " in first
    assert rest == ["exit 0", "no torch"]


def test_without_torch_the_version_says_so(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    real = metadata.version

    def version(name: str) -> str:
        if name == "torch":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "version", version)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert ", torch not installed, Python " in capsys.readouterr().out
