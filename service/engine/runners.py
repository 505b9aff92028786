"""What a batch runs on: the runner protocol of the batcher's workers, and the plain-function adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from service.contract.artifact import OUTPUT_NAME

Tiles = npt.NDArray[np.float32]


Rows = npt.NDArray[Any]  # one output's rows: float32 logits, uint8/uint16 labels


Runner = Callable[[Tiles], Tiles]  # logits only


@runtime_checkable
class OutputRunner(Protocol):
    """Runs one batch and returns the outputs named (each with one row per tile), of ``outputs``."""

    @property
    def outputs(self) -> tuple[str, ...]: ...

    def __call__(self, tiles: Tiles, names: tuple[str, ...], /) -> Mapping[str, Rows]: ...


class LogitsOnly:
    """A plain ``runner(tiles) -> logits`` as an :class:`OutputRunner`."""

    outputs = (OUTPUT_NAME,)

    def __init__(self, run: Runner) -> None:
        self._run = run

    def __call__(self, tiles: Tiles, names: tuple[str, ...], /) -> Mapping[str, Rows]:
        return {OUTPUT_NAME: self._run(tiles)}
