"""A model repository: ``PSPNET_MODEL`` names one artifact file or a directory of them.

Every ``.onnx`` file directly in the directory is an entry, served under its
metadata name (the ``name`` of the ``pspnet`` metadata, or of the description
file ``X.json`` beside ``X.onnx``: any segmentation ONNX,
service/contract/description.py). A file that is not a
usable artifact does not stop the others: it is an unavailable entry with the
reason, listed by ``/v1/models``. Two usable files with one name are refused at
start, naming both. A single file given by path must be usable (as before the
repository existed). Names become URL path segments (``/v2/models/{name}``), so
they are limited to letters, digits, ``.``, ``_`` and ``-``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from service.contract.artifact import ArtifactError, ArtifactMeta
from service.contract.description import read_description

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RepositoryError(ValueError):
    """The repository cannot be served at all; the message says why."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    meta: ArtifactMeta | None  # None: not servable, see error
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.meta is not None


def _entry(path: Path) -> ModelEntry:
    try:
        meta = read_description(path).meta
    except ArtifactError as e:
        return ModelEntry(path.stem, path, None, str(e))
    if not NAME.fullmatch(meta.name):
        return ModelEntry(path.stem, path, None, f"model name {meta.name!r} is not a URL-safe name "
                          "(letters, digits, '.', '_', '-'); re-export it with another name")
    return ModelEntry(meta.name, path, meta)


def scan(path: Path, *, require_servable: bool = True) -> list[ModelEntry]:
    """The entries of ``path`` (a file or a directory), sorted by name; raises RepositoryError.

    ``require_servable=False`` (a reload, where a broken file keeps its previous version serving):
    entries are returned even when none is usable; two usable files of one name still raise.
    """
    if path.is_file():
        entry = _entry(path)
        if entry.error is not None and require_servable:
            raise RepositoryError(entry.error)
        return [entry]
    if not path.is_dir():
        raise RepositoryError(f"model file or directory not found: {path}")
    entries = [_entry(p) for p in sorted(path.iterdir()) if p.suffix == ".onnx" and p.is_file()]
    served: dict[str, ModelEntry] = {}
    for e in entries:
        if e.available and e.name in served:
            raise RepositoryError(f"two artifacts are named {e.name!r}: {served[e.name].path.name} and "
                                  f"{e.path.name}; rename one (its metadata name) or move it out")
        if e.available:
            served[e.name] = e
    if not served and require_servable:
        reasons = "; ".join(f"{e.path.name}: {e.error}" for e in entries) or "no .onnx files"
        raise RepositoryError(f"no servable model in {path} ({reasons})")
    return sorted(entries, key=lambda e: (e.name, e.path.name))


def default_model(entries: list[ModelEntry], wanted: str | None) -> str | None:
    """The model ``/v1/segment`` serves: ``wanted`` (PSPNET_DEFAULT_MODEL), else the only one,
    else None (the caller answers 400 listing the names). A ``wanted`` name that is not served
    is a RepositoryError, at start."""
    names = [e.name for e in entries if e.available]
    if wanted is not None:
        if wanted not in names:
            raise RepositoryError(f"default model {wanted!r} is not in the repository: {names}")
        return wanted
    return names[0] if len(names) == 1 else None
