"""The record of a ``pspnet-serve segment`` run: ``OUT/manifest.jsonl``, atomic writes, resuming.

One JSON line per input, in the order of the inputs:

    {"input": "photos/a/x.jpg", "output": "a/x.png", "status": "ok", "width": 480, "height": 360,
     "seconds": 0.081, "classes": {"0": 0.12, "3": 0.88}, "error": null}

- ``output``: the result's path under ``OUT`` (POSIX separators);
- ``status``: ``ok`` (segmented and written by this run), ``skipped`` (its output was already
  there from an earlier run; not read again), ``error`` (not segmented: unreadable, undecodable,
  over the pixel limit, or failed; ``error`` says why);
- ``width``, ``height``: of the image as decoded (EXIF orientation applied), or as its header
  declares when it was refused; ``seconds``: this run's time for it; ``classes``: class id ->
  fraction of the pixels, for the classes present. A ``skipped`` line repeats ``width``,
  ``height`` and ``classes`` from the earlier run's line when there is one.

While a run goes, each line is appended to ``OUT/.manifest.jsonl.partial`` as its input
finishes; at the end ``manifest.jsonl`` is rewritten in one piece (temporary file, then rename)
and the partial file removed. A run that dies leaves the partial file, which the next run
reads, with the manifest, for what the earlier runs recorded.

Every output file is written the same way (:func:`atomic_write`), so a file present under its
final name is complete: resuming skips it without looking inside.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any, Literal

MANIFEST = "manifest.jsonl"
PARTIAL = ".manifest.jsonl.partial"

Status = Literal["ok", "skipped", "error"]
STATUSES: tuple[Status, ...] = ("ok", "skipped", "error")


@dataclass(frozen=True)
class Record:
    """One manifest line."""

    input: str
    output: str | None
    status: Status
    width: int | None = None
    height: int | None = None
    seconds: float | None = None
    classes: dict[str, float] | None = None
    error: str | None = None

    def to_line(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_line(cls, line: str) -> Record:
        doc = json.loads(line)
        if not isinstance(doc, dict) or doc.get("status") not in STATUSES:
            raise ValueError(f"not a manifest line: {line[:80]!r}")
        fields: dict[str, Any] = {k: doc.get(k) for k in cls.__dataclass_fields__}
        return cls(**fields)


def atomic_write(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file in the same folder and a rename.

    Readers (and a later resume) see the old file or the whole new one, never a part. The
    temporary name is unique (``.NAME.XXXX.tmp``), so two writers never share one. The file gets
    the mode any file a user writes gets, ``0666`` less the umask (e.g. 0644), not mkstemp's 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new file ``.NAME.XXXX.tmp`` beside ``path``, open for writing; created, as mkstemp does,
    with O_EXCL (never an existing file or link), but with mode 0666 for the kernel to apply the
    umask (and a default ACL) to: reading the umask to chmod would race with other threads."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(path.parent))


def earlier_records(out: Path) -> dict[str, Record]:
    """What earlier runs recorded into ``out``, by output path: the manifest, then a partial one.

    Later lines win; lines that do not parse (a run killed mid-write) are ignored.
    """
    found: dict[str, Record] = {}
    for name in (MANIFEST, PARTIAL):
        try:
            text = (out / name).read_text(encoding="utf-8")
        except OSError:
            continue
        for line in text.splitlines():
            try:
                record = Record.from_line(line)
            except (ValueError, TypeError):
                continue
            if record.output is not None:
                found[record.output] = record
    return found


def skipped_record(source: str, output: str, earlier: Record | None) -> Record:
    """The line of an input whose output is already there, with what an earlier run knew of it."""
    if earlier is None or earlier.status == "error":
        return Record(source, output, "skipped")
    return replace(earlier, input=source, status="skipped", seconds=None, error=None)


class ManifestWriter:
    """Collects a run's lines: each appended to the partial file at once, all rewritten at the end."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, Record] = {}
        self._partial: IO[str] | None = open(out / PARTIAL, "a", encoding="utf-8")  # noqa: SIM115

    def add(self, record: Record) -> None:
        self._records[record.input] = record
        if self._partial is not None:
            self._partial.write(record.to_line() + "\n")
            self._partial.flush()

    def get(self, source: str) -> Record | None:
        return self._records.get(source)

    @property
    def records(self) -> list[Record]:
        return list(self._records.values())

    def finish(self, order: Iterable[str]) -> Path:
        """Write ``manifest.jsonl``, one line per input in ``order`` (all added), and drop the partial."""
        lines = [self._records[source].to_line() + "\n" for source in order]
        path = self.out / MANIFEST
        atomic_write(path, "".join(lines).encode("utf-8"))
        self.close()
        (self.out / PARTIAL).unlink(missing_ok=True)
        return path

    def close(self) -> None:
        if self._partial is not None:
            self._partial.close()
            self._partial = None
