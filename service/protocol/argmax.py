"""Argmax over a leading class axis, ``(C, H, W) -> (H, W)``, in whole-image vector passes.

``np.argmax(probs, axis=0)`` moves the class axis last (a copy of the whole
array) and then loops over C values per pixel: for a 360x480 tile of 11
classes that took about 10x longer here than C - 1 passes of compare, select
and running maximum over whole planes. Same result: on a tie the first class
wins, because only a strictly larger value moves the label.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Labels = NDArray[np.uint8] | NDArray[np.uint16]


def argmax_classes(probs: NDArray[np.float32] | NDArray[np.float64],
                   dtype: type[np.uint8] | type[np.uint16]) -> Labels:
    """``probs.argmax(axis=0).astype(dtype)`` for finite ``probs`` of shape (C, H, W).

    NaN is not handled as numpy does (numpy returns the first NaN): probabilities
    of finite logits are never NaN. ``dtype`` must hold C - 1.
    """
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise ValueError(f"expected (C, H, W) scores, got shape {probs.shape}")
    if probs.shape[0] - 1 > np.iinfo(dtype).max:
        raise ValueError(f"{probs.shape[0]} classes do not fit {np.dtype(dtype).name}")
    best = probs[0].copy()
    labels = np.zeros(best.shape, dtype=dtype)
    better = np.empty(best.shape, dtype=bool)
    step = np.empty(best.shape, dtype=dtype)
    for c in range(1, probs.shape[0]):
        np.greater(probs[c], best, out=better)
        # labels += better * (c - labels), in integers: numpy vectorises this, while a masked
        # copyto or a boolean-index assignment takes a slow path (about 10x slower per pass here);
        # unsigned wrap-around in c - labels cancels out exactly
        np.subtract(dtype(c), labels, out=step)
        np.multiply(step, better, out=step, casting="unsafe")
        np.add(labels, step, out=labels)
        np.maximum(best, probs[c], out=best)
    return labels
