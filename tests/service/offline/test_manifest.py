"""service.offline.manifest: manifest lines, atomic writes, what a rerun learns from earlier runs."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import pytest

from service.offline.manifest import (
    MANIFEST,
    PARTIAL,
    ManifestWriter,
    Record,
    atomic_write,
    earlier_records,
    skipped_record,
)

OK = Record("in/a.png", "a.png", "ok", 40, 30, 0.5, {"0": 0.25, "3": 0.75})


def test_a_record_is_one_json_line_and_back() -> None:
    line = OK.to_line()
    assert "\n" not in line and line.startswith('{"input":"in/a.png","output":"a.png","status":"ok"')
    assert Record.from_line(line) == OK
    with pytest.raises(ValueError):
        Record.from_line('{"input": "x", "status": "done"}')


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "sub" / "a.png"
    atomic_write(target, b"first")
    assert target.read_bytes() == b"first"

    def fail(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write(target, b"second")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.png"]  # no temporary left behind


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664)], ids=["umask022", "umask002"])
def test_atomic_write_gives_the_mode_of_any_new_file(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.png", b"data")
        (tmp_path / "b.png").write_bytes(b"old")
        (tmp_path / "b.png").chmod(0o600)
        atomic_write(tmp_path / "b.png", b"new")  # a replaced file: a new file's mode too
    finally:
        os.umask(old)
    assert [stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("a.png", "b.png")] == [mode, mode]


def test_atomic_write_never_opens_an_existing_temporary(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    names = iter(["taken", "taken", "free"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".a.png.taken.tmp").write_bytes(b"someone else's")
    atomic_write(tmp_path / "a.png", b"data")
    assert (tmp_path / "a.png").read_bytes() == b"data"
    assert (tmp_path / ".a.png.taken.tmp").read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.png.taken.tmp", "a.png"]


def test_earlier_records_read_the_manifest_then_the_partial(tmp_path: Path) -> None:
    old = Record("in/b.png", "b.png", "error", error="broken")
    (tmp_path / MANIFEST).write_text(OK.to_line() + "\n" + old.to_line() + "\n")
    newer = Record("in/b.png", "b.png", "ok", 10, 10, 0.1, {"1": 1.0})
    (tmp_path / PARTIAL).write_text(newer.to_line() + "\n" + '{"input": "in/c.png", "outp')  # cut short
    assert earlier_records(tmp_path) == {"a.png": OK, "b.png": newer}
    assert earlier_records(tmp_path / "nothing") == {}


def test_a_skipped_line_keeps_what_the_earlier_run_knew() -> None:
    assert skipped_record("in/a.png", "a.png", OK) == Record("in/a.png", "a.png", "skipped", 40, 30, None,
                                                            {"0": 0.25, "3": 0.75})
    failed = Record("in/a.png", "a.png", "error", error="x")
    assert skipped_record("in/a.png", "a.png", failed) == Record("in/a.png", "a.png", "skipped")
    assert skipped_record("in/a.png", "a.png", None) == Record("in/a.png", "a.png", "skipped")


def test_the_writer_appends_as_it_goes_and_rewrites_in_input_order(tmp_path: Path) -> None:
    writer = ManifestWriter(tmp_path)
    late = Record("in/b.png", None, "error", error="undecodable")
    writer.add(late)
    assert (tmp_path / PARTIAL).read_text() == late.to_line() + "\n"  # on disk before the run ends
    writer.add(OK)
    path = writer.finish(["in/a.png", "in/b.png"])
    assert path.read_text().splitlines() == [OK.to_line(), late.to_line()]
    assert not (tmp_path / PARTIAL).exists()
