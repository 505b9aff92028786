"""Readers for the deployment files, shared by the tests in this folder."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {"gpu": ROOT / "Dockerfile", "cpu": ROOT / "docker" / "Dockerfile.cpu"}


@cache
def load_module(relpath: str) -> ModuleType:
    """A repository script (scripts/, docker/) imported by path: they are not packages."""
    path = ROOT / relpath
    name = "deploy_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def load_yaml(relpath: str) -> Any:
    return yaml.safe_load((ROOT / relpath).read_text())


def load_yaml_docs(relpath: str) -> list[Any]:
    return [d for d in yaml.safe_load_all((ROOT / relpath).read_text()) if d]


def load_json(relpath: str) -> Any:
    return json.loads((ROOT / relpath).read_text())


# ---------------------------------------------------------------- Dockerfiles

@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the logical line

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, None for shell form."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            text = text.split("CMD", 1)[1] if "CMD" in text else ""
        try:
            value = json.loads(text.strip())
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) else None

    def flags_and_words(self) -> tuple[dict[str, str], list[str]]:
        words = shlex.split(self.args)
        flags = {}
        while words and words[0].startswith("--"):
            key, _, value = words.pop(0)[2:].partition("=")
            flags[key] = value
        return flags, words


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            for word in shlex.split(ins.args):
                key, _, value = word.partition("=")
                out[key] = value
        return out


def parse_dockerfile(path: Path) -> list[Stage]:
    """The stages of a Dockerfile: logical lines (continuations joined, comments dropped)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages


def copy_sources(stage: Stage) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context (not --from) in ``stage``."""
    out = []
    for ins in stage.all("COPY"):
        flags, words = ins.flags_and_words()
        if "from" not in flags:
            out.append((words[:-1], words[-1]))
    return out


# ---------------------------------------------------------------- .dockerignore

def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Go's filepath.Match as Docker uses it: ``*`` and ``?`` stay in one path component, ``**`` not."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def _matches(pattern: str, path: str) -> bool:
    """A pattern matches a path or any of its parent directories (excluding a folder excludes its files)."""
    regex = _pattern_regex(pattern.strip("/"))
    parts = path.split("/")
    return any(regex.fullmatch("/".join(parts[: i + 1])) for i in range(len(parts)))


def dockerignore_keeps(path: str, patterns: list[str]) -> bool:
    """Whether the build context keeps ``path`` (relative, '/'-separated): the last matching pattern wins."""
    kept = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        if _matches(pattern.lstrip("!"), path):
            kept = negate
    return kept


# ---------------------------------------------------------------- the images' lock files

LOCKS = {"cpu": ROOT / "docker" / "requirements-cpu.txt", "gpu": ROOT / "docker" / "requirements-gpu.txt"}
#: how uv names the project in "# via" lines
LOCK_ROOT = "pspnet-serving (pyproject.toml)"
#: requirement files docker/lock.sh adds to a flavour's pyproject.toml ones (the GPU image's CUDA wheels)
LOCK_INPUTS = {"cpu": [], "gpu": ["docker/gpu-libs.in"]}


def lock_input_root(relpath: str) -> str:
    """How uv names a requirements file in "# via" lines."""
    return f"-r {relpath}"


def read_requirements_in(relpath: str) -> list[str]:
    """The requirement lines of a ``.in`` file (comments and blank lines dropped)."""
    lines = (ROOT / relpath).read_text().splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]


@dataclass
class Pin:
    name: str  # normalised (PEP 503)
    version: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)  # normalised names, LOCK_ROOT or "-r FILE"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, Pin]:
    """uv pip compile's output (docker/lock.sh): pins, their hashes and their "# via" parents."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line:
            continue
        if not raw.startswith((" ", "#")):
            spec = line.rstrip("\\").strip()
            name, sep, version = spec.partition("==")
            assert sep and ";" not in spec and "[" not in name, f"not an exact pin without markers: {spec}"
            current = pins[normalise(name)] = Pin(normalise(name), version)
        elif line.startswith("--hash=") and current is not None:
            current.hashes.append(line.removeprefix("--hash=").rstrip("\\").strip())
        elif line.startswith("#") and current is not None:
            text = line.lstrip("#").strip().removeprefix("via").strip()
            if text:
                root = text == LOCK_ROOT or text.startswith("-r ")
                current.via.append(text if root else normalise(text))
    return pins


# ---------------------------------------------------------------- a server from an installed venv

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> tuple[int, str]:
    """Status and text of a GET by the standard library (the venvs under test have no httpx)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_ready(base: str, proc: subprocess.Popen[str], seconds: float = 120) -> None:
    """Poll ``base``/readyz until 200; fail with the exit code if the process ends first."""
    deadline = time.monotonic() + seconds
    ready = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            ready, _ = http_get(base + "/readyz")
        except OSError:
            ready = 0
        if ready == 200:
            return
        time.sleep(0.25)
    output = proc.stdout.read()[-3000:] if proc.poll() is not None and proc.stdout else ""
    raise AssertionError(f"not ready in time (exit code {proc.poll()})\n{output}")
