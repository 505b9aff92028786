"""What ``pspnet-serve segment`` reads, and where each result goes.

Inputs (:func:`expand_inputs`), in the order given, each expansion sorted, duplicates dropped:

- a file: taken whatever its name (the decoder decides what it is);
- a folder: every image below it, recursively (:data:`IMAGE_SUFFIXES`);
- a glob pattern (``photos/*.jpg``, ``data/**/*.png``; ``**`` crosses folders): the files it
  matches, and the images below the folders it matches;
- a URI (``s3://bucket/prefix``, ``gs://...``, ``file:///...``: any filesystem pyarrow opens,
  i.e. what Ray Data reads): the object, or every image below the prefix. Needs pyarrow (the
  ``ray`` extra) and credentials in the environment, as Ray Data does; no patterns.

Folders and patterns never yield files inside the output folder, so a rerun does not segment
its own outputs.

Outputs (:func:`output_names`) mirror the inputs' paths relative to their common root: the
common folder of the folders given, the fixed leading part of the patterns and the folders of
the files given (from what was asked, not what was found, so a rerun over a folder that gained
files keeps every earlier output where it was). ``a/x.png`` and ``b/x.png`` under one root
become ``a/x.<ext>`` and ``b/x.<ext>``. The format's suffix replaces the input's, except where
two inputs of one folder share a stem (``x.png``, ``x.jpg``): those keep their whole name
(``x.png.<ext>``, ``x.jpg.<ext>``). No two inputs ever share an output: a set that would
(only contrived names can) is refused as a usage error.
"""

from __future__ import annotations

import glob
import os
import posixpath
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from service.codec.decode import NO_LIMITS, DecodedImage, decode
from service.contract.folders import IMAGE_SUFFIXES

#: what a folder or a URI prefix yields (explicit files and pattern matches are taken as they are)
BULK_SUFFIXES = IMAGE_SUFFIXES | {".gif"}
_GLOB_CHARS = frozenset("*?[")


class InputError(ValueError):
    """The inputs cannot be expanded or laid out: a usage error (exit status 2)."""


@dataclass(frozen=True)
class Input:
    """One input file."""

    source: str  # as the user knows it: the path as found (relative if given relative), or the URI
    location: str  # what is read: an absolute local path, or the URI
    rel: PurePosixPath  # its path under the inputs' common root


def is_uri(spec: str) -> bool:
    scheme, sep, _ = spec.partition("://")
    return bool(sep) and scheme.isidentifier()


def expand_inputs(specs: Sequence[str], *, exclude: Path | None = None) -> list[Input]:
    """Every input file of ``specs``, with its path under the common root; :class:`InputError` if none."""
    if not specs:
        raise InputError("no inputs given")
    kinds = {is_uri(s) for s in specs}
    if len(kinds) > 1:
        raise InputError("inputs must be all local paths or all URIs, not a mix")
    uris = kinds == {True}
    anchors, files = _expand_uris(specs) if uris else _expand_local(specs, exclude)
    if not files:
        raise InputError("no input files found in " + ", ".join(specs))
    paths = posixpath if uris else os.path
    root = paths.commonpath(anchors)
    return [Input(source, location, PurePosixPath(Path(paths.relpath(key, root)).as_posix()))
            for source, location, key in files]


def output_names(inputs: Sequence[Input], suffix: str) -> list[PurePosixPath]:
    """Each input's output path under ``--out``, ending in ``suffix`` (module docstring)."""
    stems = Counter((i.rel.parent, i.rel.stem.casefold()) for i in inputs)
    names = [i.rel.parent / (i.rel.name + suffix) if stems[i.rel.parent, i.rel.stem.casefold()] > 1
             else i.rel.with_name(i.rel.stem + suffix) for i in inputs]
    seen: dict[str, Input] = {}
    for name, inp in zip(names, inputs, strict=True):
        other = seen.setdefault(str(name).casefold(), inp)
        if other is not inp:
            raise InputError(f"{other.source} and {inp.source} would both be written to {name}; "
                             "rename one of them")
    return names


def read_input(location: str) -> bytes:
    """The bytes of an input: a local file, or a URI through pyarrow's filesystems."""
    if not is_uri(location):
        return Path(location).read_bytes()
    filesystem, path = _filesystem(location)
    with filesystem.open_input_stream(path) as f:
        data: bytes = f.read()
    return data


# --- local paths ---------------------------------------------------------------------------------

def _expand_local(specs: Sequence[str], exclude: Path | None) -> tuple[list[str], list[tuple[str, str, str]]]:
    """(root candidates, [(source, absolute location, location key)]) of local specs."""
    skip = os.path.abspath(exclude) if exclude is not None else None
    anchors: list[str] = []
    files: list[tuple[str, str, str]] = []
    seen: set[str] = set()

    def add(paths: Iterable[str]) -> None:
        for p in paths:
            absolute = os.path.abspath(p)
            if absolute not in seen:
                seen.add(absolute)
                files.append((p, absolute, absolute))

    for spec in specs:
        if os.path.isdir(spec):
            anchors.append(os.path.abspath(spec))
            add(_walk(spec, skip))
        elif os.path.isfile(spec):
            anchors.append(os.path.dirname(os.path.abspath(spec)))
            add([spec])
        elif _GLOB_CHARS & set(spec):
            anchors.append(os.path.abspath(_fixed_part(spec)))
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise InputError(f"nothing matches {spec}")
            for m in matches:
                if _inside(os.path.abspath(m), skip):
                    continue
                if os.path.isdir(m):
                    add(_walk(m, skip))
                elif os.path.isfile(m):
                    add([m])
        else:
            raise InputError(f"no such file or folder: {spec}")
    return anchors, files


def _walk(folder: str, skip: str | None) -> Iterator[str]:
    """Images below ``folder``, sorted, never inside ``skip``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not _inside(os.path.abspath(os.path.join(dirpath, d)), skip)]
        found += [os.path.join(dirpath, f) for f in filenames if Path(f).suffix.lower() in BULK_SUFFIXES]
    return iter(sorted(found))


def _inside(path: str, folder: str | None) -> bool:
    return folder is not None and (path == folder or path.startswith(folder.rstrip(os.sep) + os.sep))


def _fixed_part(pattern: str) -> str:
    """The leading folders of a pattern that hold no glob character (``.`` if none)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


# --- URIs ----------------------------------------------------------------------------------------

def _filesystem(uri: str) -> tuple[Any, str]:
    try:
        from pyarrow import fs
    except ImportError:
        raise InputError(f"reading {uri} needs pyarrow: pip install 'pspnet-serving[ray]'") from None
    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as e:  # unknown scheme, no credentials, no bucket
        raise InputError(f"cannot open {uri}: {e}") from None
    return filesystem, str(path)


def _expand_uris(specs: Sequence[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """As :func:`_expand_local` for URIs; keys are ``/bucket/path`` (``/path`` for ``file://``)."""
    from pyarrow import fs

    anchors: list[str] = []
    files: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for spec in specs:
        filesystem, path = _filesystem(spec)
        scheme = spec.split("://", 1)[0]
        query = spec[spec.index("?"):] if "?" in spec else ""  # e.g. ?region=...: every object needs it
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.Directory:
            anchors.append(_key(path))
            listing = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
            found = sorted(i.path for i in listing if i.type == fs.FileType.File
                           and PurePosixPath(i.path).suffix.lower() in BULK_SUFFIXES)
        elif info.type == fs.FileType.File:
            anchors.append(posixpath.dirname(_key(path)))
            found = [path]
        else:
            raise InputError(f"no such object or prefix: {spec}")
        for p in found:
            uri = f"{scheme}://{p}{query}"  # pyarrow paths are bucket/key, or /path for file://
            if uri not in seen:
                seen.add(uri)
                files.append((uri, uri, _key(p)))
    return anchors, files


def _key(path: str) -> str:
    return "/" + path.strip("/")


def read_image(path: Path) -> DecodedImage:
    """A local file through the service's own decoder (EXIF, modes, first frame), no size limits."""
    return decode(path.read_bytes(), None, NO_LIMITS)
