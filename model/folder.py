"""Image/label folder pairs (e.g. CamVid ``train/`` + ``trainannot/``).

Tested by tests/model/test_train.py (training on synthetic folder pairs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from service.contract.folders import paired_files

__all__ = ["load_pair", "paired_files"]

def load_pair(img: Path, lab: Path, num_classes: int, ignore_index: int = 255
              ) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 image and uint8 label; ids >= num_classes become ``ignore_index``."""
    image = np.array(Image.open(img).convert("RGB"))
    label = np.array(Image.open(lab))
    if label.ndim != 2:
        raise ValueError(f"label {lab} is not a single-channel class map")
    if label.shape != image.shape[:2]:
        raise ValueError(f"label {lab} is {label.shape}, image is {image.shape[:2]}")
    label = label.astype(np.int64)
    label[label >= num_classes] = ignore_index
    return image, label.astype(np.uint8)
