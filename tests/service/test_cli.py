"""``pspnet-serve``: ``--version``; ``segment`` lives through SIGHUP and writes files of the usual mode."""

from __future__ import annotations

import os
import platform
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import onnxruntime
import pytest

from service.cli import main
from service.contract import version
from service.offline import segment as offline
from tests.service.api_client import png_bytes
from tests.service.bulk_files import tree

ROOT = Path(__file__).resolve().parents[2]


def test_version_names_the_package_onnxruntime_and_python(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    gpu = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    wheel = "onnxruntime-gpu" if gpu else "onnxruntime"
    assert out == (f"pspnet-serve {metadata.version('pspnet-serving')}, "
                   f"ONNX Runtime {onnxruntime.__version__} ({wheel}), Python {platform.python_version()}\n")


def test_version_as_a_command_of_its_own() -> None:
    # the installed entry point's module, in a process of its own: one line, exit 0, nothing on stderr
    done = subprocess.run([sys.executable, "-m", "service.cli", "--version"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert len(done.stdout.splitlines()) == 1
    assert done.stdout.startswith(f"pspnet-serve {version.package_version()}, ONNX Runtime ")
    assert done.stdout.rstrip().endswith(f", Python {platform.python_version()}")


def _not_installed(name: str) -> str:
    raise metadata.PackageNotFoundError(name)


def test_a_checkout_not_installed_reads_pyproject(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(metadata, "version", _not_installed)
    assert version.package_version() == f"{_pyproject_version()} (not installed)"
    assert version.server_version() == _pyproject_version()  # what /v2 and the OpenAPI document say
    monkeypatch.setattr(version, "_PYPROJECT", tmp_path / "pyproject.toml")  # an installed copy: none there
    assert version.package_version() == "unknown"
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "something-else"\nversion = "9"\n')
    assert version.package_version() == "unknown"
    (tmp_path / "pyproject.toml").write_text("not [toml")
    assert version.package_version() == "unknown"


def _pyproject_version() -> str:
    import tomllib

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def test_without_onnxruntime_the_version_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ModuleNotFoundError
    assert version.onnxruntime_version() == "not installed"
    assert ", ONNX Runtime not installed, " in version.version_line("pspnet-serve")


def test_distribution_versions_come_from_metadata() -> None:
    assert version.distribution_version("pytest") == pytest.__version__
    assert version.distribution_version("no-such-distribution-here") == "not installed"


# --- segment and SIGHUP ------------------------------------------------------------------------

@pytest.fixture
def sighup() -> Iterator[None]:
    """Restores this process's SIGHUP handler after a test that runs segment_main in it."""
    before = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, before)


def test_segment_sets_its_sighup_handler_before_anything_else(tmp_path: Path, sighup: None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    monkeypatch.setattr(offline, "_segment", lambda argv: seen.append(signal.getsignal(signal.SIGHUP)) or 0)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    assert main(["segment", "x.png", "--out", str(tmp_path)]) == 0
    assert seen == [offline._sighup]
    assert signal.getsignal(signal.SIGHUP) is offline._sighup  # to the end of the process: no window


def test_a_segment_run_lives_through_sighup(model: Path, tmp_path: Path) -> None:
    # a real run, signalled again and again from when it starts its manifest until it ends: before
    # the handler, the first SIGHUP ended it (exit status 129 from a shell, -SIGHUP here)
    n = 150
    inputs = tree(tmp_path / "in", {f"img{i:03d}.png": png_bytes(64, 96, seed=i) for i in range(n)})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "segment", str(inputs), "--out", str(out),
                             "--model", str(model), "--threads", "1", "--mode", "slide", "--flip"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sent = 0
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if (out / ".manifest.jsonl.partial").exists():  # segment_main is under way: its handler is set
                proc.send_signal(signal.SIGHUP)
                sent += 1
            time.sleep(0.005)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-2000:]
    assert sent >= 3, "the run ended before it could be signalled: give it more work"
    assert f"{n} segmented" in stdout
    assert len(list(out.glob("*.png"))) == n


# --- the mode of what segment writes -----------------------------------------------------------

@pytest.fixture
def umask() -> Iterator[None]:
    """Restores the process's umask after a test that sets it."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)],
                         ids=["umask022", "umask002", "umask077"])
def test_results_and_manifest_get_the_mode_of_any_new_file(model: Path, tmp_path: Path, umask: None,
                                                           mask: int, mode: int) -> None:
    inputs = tree(tmp_path / "in", {"a.png": png_bytes(30, 40), "sub/b.png": png_bytes(30, 40, seed=1)})
    out = tmp_path / "out"
    os.umask(mask)
    assert main(["segment", str(inputs), "--out", str(out), "--model", str(model)]) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "manifest.jsonl", "sub/b.png"]
    modes = {f: oct(stat.S_IMODE((out / f).stat().st_mode)) for f in written}
    assert modes == dict.fromkeys(written, oct(mode))
