"""Dataset metadata (class names, palettes, per-source tile and protocol) as package data.

The JSON lives in ``model/data/datasets.json``; the exporter copies the
relevant entry into each artifact's metadata, which is the only place the
service reads it from.

Each dataset has ``protocols`` keyed by checkpoint source: ``semseg`` (the
official hszhao/semseg code), ``mmseg`` (MMSegmentation) or ``*`` (any source).
An entry holds ``tile`` [h, w] and ``base_size`` and may set ``mode``,
``scales``, ``stride_rate`` and ``flip``; the defaults below apply otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

#: ImageNet statistics in 0..255, used by both official sources and by our training
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

#: where a source has no entry of its own: ``*`` first, then the official defaults
_FALLBACK_SOURCES = ("*", "semseg")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    tile: tuple[int, int]
    base_size: int
    # request defaults: single scale, no flip ("+flip" is an explicit choice, see docs/DESIGN.md)
    mode: str = "slide"
    scales: tuple[float, ...] = (1.0,)
    stride_rate: float = 2 / 3
    flip: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@cache
def _table() -> dict[str, Any]:
    text = resources.files("model").joinpath("data/datasets.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def dataset_names() -> list[str]:
    return sorted(_table())


def dataset_info(name: str, source: str = "native") -> DatasetInfo:
    """Metadata of ``name`` with the defaults of checkpoints from ``source``.

    A source without an entry of its own (our ``native`` checkpoints trained
    on ADE20K, say) gets the ``*`` entry, else the official ``semseg`` one.
    """
    table = _table()
    if name not in table:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(table))}")
    entry = table[name]
    protocols = entry["protocols"]
    proto = next((protocols[s] for s in (source, *_FALLBACK_SOURCES) if s in protocols), None)
    if proto is None:
        raise KeyError(f"no {source} defaults for dataset {name!r}")
    return DatasetInfo(
        name=name, title=entry["title"], classes=tuple(entry["classes"]),
        palette=tuple((int(c[0]), int(c[1]), int(c[2])) for c in entry["palette"]),
        tile=(int(proto["tile"][0]), int(proto["tile"][1])), base_size=int(proto["base_size"]),
        mode=str(proto.get("mode", "slide")),
        scales=tuple(float(s) for s in proto.get("scales", (1.0,))),
        stride_rate=float(proto.get("stride_rate", 2 / 3)), flip=bool(proto.get("flip", False)),
    )
