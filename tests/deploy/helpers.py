"""Readers for the deployment files, shared by the tests in this folder."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
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
