"""service.repository.directory: a file or a directory of artifacts, names, duplicates, broken files."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.repository.directory import RepositoryError, default_model, scan
from tests.service.tiny_model import build_tiny_artifact


def test_single_file_is_one_entry(tmp_path: Path) -> None:
    (entry,) = scan(build_tiny_artifact(tmp_path / "a.onnx", name="alpha"))
    assert (entry.name, entry.available, entry.error) == ("alpha", True, None)


def test_single_broken_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(RepositoryError, match="not a readable ONNX model"):
        scan(bad)


def test_directory_serves_every_artifact_and_lists_broken_ones(tmp_path: Path) -> None:
    build_tiny_artifact(tmp_path / "one.onnx", name="alpha")
    build_tiny_artifact(tmp_path / "two.onnx", name="beta", num_classes=3)
    (tmp_path / "broken.onnx").write_bytes(b"\x00garbage")
    (tmp_path / "notes.txt").write_text("ignored: not .onnx")
    entries = scan(tmp_path)
    assert [(e.name, e.available) for e in entries] == [("alpha", True), ("beta", True), ("broken", False)]
    broken = entries[2]
    assert broken.path.name == "broken.onnx" and broken.error and "readable" in broken.error
    assert entries[1].meta is not None and entries[1].meta.num_classes == 3


def test_two_files_with_one_name_are_refused_naming_both(tmp_path: Path) -> None:
    build_tiny_artifact(tmp_path / "first.onnx", name="same")
    build_tiny_artifact(tmp_path / "second.onnx", name="same")
    with pytest.raises(RepositoryError, match=r"'same'.*first\.onnx and second\.onnx"):
        scan(tmp_path)


def test_a_name_that_cannot_be_a_path_segment_is_unavailable(tmp_path: Path) -> None:
    build_tiny_artifact(tmp_path / "ok.onnx", name="ok")
    build_tiny_artifact(tmp_path / "slash.onnx", name="a/b")
    entries = {e.path.name: e for e in scan(tmp_path)}
    assert entries["ok.onnx"].available
    assert not entries["slash.onnx"].available and "URL-safe" in (entries["slash.onnx"].error or "")


def test_nothing_servable_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match=r"no \.onnx files"):
        scan(tmp_path)
    (tmp_path / "x.onnx").write_bytes(b"")
    with pytest.raises(RepositoryError, match=r"x\.onnx"):
        scan(tmp_path)
    with pytest.raises(RepositoryError, match="not found"):
        scan(tmp_path / "missing")


def test_default_model(tmp_path: Path) -> None:
    build_tiny_artifact(tmp_path / "a.onnx", name="alpha")
    one = scan(tmp_path)
    assert default_model(one, None) == "alpha"
    build_tiny_artifact(tmp_path / "b.onnx", name="beta")
    two = scan(tmp_path)
    assert default_model(two, None) is None
    assert default_model(two, "beta") == "beta"
    with pytest.raises(RepositoryError, match="gamma"):
        default_model(two, "gamma")
