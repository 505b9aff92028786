"""service.offline.inputs: files, folders and patterns expanded; outputs mirrored under one root, unshared."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from service.offline.inputs import Input, InputError, expand_inputs, is_uri, output_names, read_input


def touch(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())
    return root


def rels(inputs: list[Input]) -> list[str]:
    return [str(i.rel) for i in inputs]


def test_a_folder_yields_its_images_recursively_sorted(tmp_path: Path) -> None:
    src = touch(tmp_path / "in", "b/x.png", "a/x.png", "a/deep/y.JPG", "a/notes.txt", "c.gif")
    inputs = expand_inputs([str(src)])
    assert rels(inputs) == ["a/deep/y.JPG", "a/x.png", "b/x.png", "c.gif"]
    assert [i.location for i in inputs] == [str(src / r) for r in rels(inputs)]


def test_the_root_is_what_was_asked_not_what_was_found(tmp_path: Path) -> None:
    # one folder given whose images all sit in a subfolder: the subfolder stays in the layout, so a
    # rerun after images arrive elsewhere in it writes every earlier output to the same place
    src = touch(tmp_path / "in", "only/x.png")
    assert rels(expand_inputs([str(src)])) == ["only/x.png"]


def test_files_in_different_folders_mirror_below_their_common_folder(tmp_path: Path) -> None:
    src = touch(tmp_path / "in", "a/x.png", "b/c/x.png")
    assert rels(expand_inputs([str(src / "a/x.png"), str(src / "b/c/x.png")])) == ["a/x.png", "b/c/x.png"]
    assert rels(expand_inputs([str(src / "b/c/x.png")])) == ["x.png"]


def test_patterns_root_at_their_fixed_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = touch(tmp_path / "in", "p/one.png", "p/q/two.png", "p/q/three.txt", "p/r/s/four.png")
    assert rels(expand_inputs([str(src / "p/**/*.png")])) == ["one.png", "q/two.png", "r/s/four.png"]
    assert rels(expand_inputs([str(src / "p/*")])) == ["one.png", "q/two.png", "r/s/four.png"]  # folders too
    monkeypatch.chdir(src)
    inputs = expand_inputs(["p/q/*.txt"])
    assert rels(inputs) == ["three.txt"] and inputs[0].source == "p/q/three.txt"  # as found, relative


def test_duplicates_are_read_once_in_first_order(tmp_path: Path) -> None:
    src = touch(tmp_path / "in", "a.png", "b.png")
    assert rels(expand_inputs([str(src / "b.png"), str(src), str(src / "*.png")])) == ["b.png", "a.png"]


def test_the_output_folder_is_never_read(tmp_path: Path) -> None:
    src = touch(tmp_path / "in", "a.png", "out/a.png", "out/sub/b.png")
    assert rels(expand_inputs([str(src)], exclude=src / "out")) == ["a.png"]
    assert rels(expand_inputs([str(src / "**")], exclude=src / "out")) == ["a.png"]


@pytest.mark.parametrize("specs", [[], ["{src}/missing.png"], ["{src}/*.webp"], ["{src}/empty"],
                                   ["{src}/a.png", "s3://bucket/x.png"]])
def test_what_cannot_be_expanded_is_an_input_error(tmp_path: Path, specs: list[str]) -> None:
    src = touch(tmp_path / "in", "a.png")
    (src / "empty").mkdir()
    with pytest.raises(InputError):
        expand_inputs([s.format(src=src) for s in specs])


def test_outputs_replace_the_suffix_unless_two_stems_meet() -> None:
    inputs = [Input(n, n, PurePosixPath(n)) for n in ("a/x.png", "a/X.jpg", "a/y.png", "b/x.png", "z")]
    assert list(map(str, output_names(inputs, ".json"))) == [
        "a/x.png.json", "a/X.jpg.json", "a/y.json", "b/x.json", "z.json"]


def test_an_output_two_inputs_would_share_is_refused() -> None:
    inputs = [Input(n, n, PurePosixPath(n)) for n in ("x.png", "x.jpg", "x.png.gif")]
    with pytest.raises(InputError, match=r"would both be written to x\.png\.png"):
        output_names(inputs, ".png")


def test_uris_are_told_from_paths(tmp_path: Path) -> None:
    assert is_uri("s3://bucket/key") and is_uri("file:///tmp/x") and is_uri("gs://b")
    assert not is_uri(str(tmp_path)) and not is_uri("a/b://c") and not is_uri("c:/x")
    touch(tmp_path, "f.png")
    assert read_input(str(tmp_path / "f.png")) == b"f.png"
