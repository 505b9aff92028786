"""Image -> same-shape tiles for every mode: the first half of the paper's test procedure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.contract.artifact import Mode, Tiles
from service.protocol.resize import resize_linear
from service.protocol.windows import ScaleGeometry, count_tiles, plan_geometry


@dataclass(frozen=True)
class TilePlan:
    """Tiles for one image and the geometry :mod:`service.protocol.stitch` needs to undo them."""

    tiles: Tiles  # (T, 3, tile_h, tile_w), contiguous, raw 0..255 RGB
    image_size: tuple[int, int]  # (height, width) of the original image
    tile: tuple[int, int]
    mode: Mode
    flip: bool
    scales: tuple[ScaleGeometry, ...]

    @property
    def num_tiles(self) -> int:
        return int(self.tiles.shape[0])


def _canvas_chw(image: NDArray[np.float32], geom: ScaleGeometry,
                mean: NDArray[np.float32]) -> NDArray[np.float32]:
    """The resized image, channels first, centred on a mean-coloured canvas."""
    # cv2 would return an identical copy for an unchanged size
    resized = image if image.shape[:2] == geom.size else resize_linear(image, geom.size)
    if geom.canvas == geom.size:
        return np.ascontiguousarray(resized.transpose(2, 0, 1))
    canvas = np.empty((3, *geom.canvas), dtype=np.float32)
    canvas[...] = mean[:, None, None]
    (top, left), (h, w) = geom.pad, geom.size
    canvas[:, top:top + h, left:left + w] = resized.transpose(2, 0, 1)
    return canvas


def scale_tiles(image: NDArray[np.generic], geom: ScaleGeometry, *, tile: tuple[int, int],
                mean: Sequence[float] = (0.0, 0.0, 0.0)) -> Tiles:
    """The tiles of one scale of a plan, ``(geom.num_tiles, 3, tile_h, tile_w)``: each window, then
    (with flip) its mirror. The image is converted to float32 first, as the official code does
    (converting again for each scale gives the same numbers and holds one copy at a time)."""
    as_float = np.asarray(image).astype(np.float32, copy=False)
    canvas = _canvas_chw(as_float, geom, np.asarray(mean, dtype=np.float32))
    del as_float
    th, tw = tile
    tiles = np.empty((geom.num_tiles, 3, th, tw), dtype=np.float32)
    k = 0
    for y in geom.rows:
        for x in geom.cols:
            tiles[k] = canvas[:, y:y + th, x:x + tw]
            if geom.flip:
                tiles[k + 1] = tiles[k, :, :, ::-1]
            k += 2 if geom.flip else 1
    return tiles


def plan_tiles(image: NDArray[np.generic], *, tile: tuple[int, int], mode: Mode,
               scales: Sequence[float] | None = None, flip: bool = False, base_size: int = 512,
               stride_rate: float = 2 / 3, mean: Sequence[float] = (0.0, 0.0, 0.0)) -> TilePlan:
    """Cut an ``HxWx3`` RGB image (uint8, or float in 0..255) into model tiles, every scale's.

    ``scales`` defaults to [1.0] for ``slide`` and the paper's six for
    ``multiscale``; ``whole`` takes none (or [1.0]). ``mean`` is the padding
    colour in 0..255 units (the model's normalisation mean). The server cuts one
    scale at a time instead (:func:`scale_tiles`), as its tiles are needed.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    if len(mean) != 3:
        raise ValueError(f"mean needs three values, got {len(mean)}")
    height, width = int(image.shape[0]), int(image.shape[1])
    geometry = plan_geometry(height, width, tile=tile, mode=mode, scales=scales, flip=flip,
                             base_size=base_size, stride_rate=stride_rate)
    tiles = np.empty((count_tiles(geometry), 3, *tile), dtype=np.float32)
    for geom in geometry:
        tiles[geom.first:geom.first + geom.num_tiles] = scale_tiles(image, geom, tile=tile, mean=mean)
    return TilePlan(tiles, (height, width), tile, mode, flip, geometry)
