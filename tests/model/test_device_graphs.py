"""The stitch graphs shipped in service/engine/graphs/ are what model/device_graphs.py makes.

What each graph computes is tested where it runs: tests/service/engine/test_device_stitch.py and
tests/service/engine/test_device_route.py (against the official float64 stitch and torch's resize).
"""

from __future__ import annotations

from pathlib import Path

import onnx

from model.device_graphs import GRAPHS, graphs, main
from service.engine.device_kit import GRAPH_NAMES


def test_the_shipped_graphs_are_the_ones_this_module_makes() -> None:
    made = dict(graphs())
    assert tuple(made) == GRAPH_NAMES  # the kit loads every graph made, and no other
    assert sorted(p.name for p in GRAPHS.glob("*.onnx")) == sorted(f"{n}.onnx" for n in made)
    for name, model in made.items():
        shipped = onnx.load(str(GRAPHS / f"{name}.onnx"))
        assert shipped == model, f"{name}.onnx is stale: run python -m model.device_graphs"


def test_the_command_writes_every_graph(tmp_path: Path) -> None:
    main(["--out", str(tmp_path)])
    for name in GRAPH_NAMES:
        assert (tmp_path / f"{name}.onnx").read_bytes() == (GRAPHS / f"{name}.onnx").read_bytes()
