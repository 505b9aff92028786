"""Size and CPU time of the PNG encoders per zlib level, on real label maps.

Not a test (pytest does not collect it): the figures behind
``service.codec.encode.PNG_COMPRESS_LEVEL``. Run from the repository root:

    python -m benchmarks.speed.png_levels ../shared/data/camvid/valannot

CPU time (time.process_time), so a busy machine does not inflate it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

import service.codec.encode as encode


def main(folder: str, levels: tuple[int, ...] = (0, 1, 2, 3, 6, 9), files: int = 10,
         repeats: int = 5) -> None:
    paths = sorted(Path(folder).glob("*.png"))[::10][:files]
    if not paths:
        raise SystemExit(f"no label PNGs in {folder}")
    labels = [np.asarray(Image.open(p)) for p in paths]
    num_classes = int(max(int(lab.max()) for lab in labels)) + 1
    palette = np.random.default_rng(0).integers(0, 256, (num_classes, 3)).astype(np.uint8)
    print(f"{len(labels)} maps of {labels[0].shape}, {num_classes} classes")
    for level in levels:
        encode.PNG_COMPRESS_LEVEL = level
        coders: dict[str, Callable[[np.ndarray], bytes]] = {
            "colour": lambda lab: encode.encode_color_png(lab, palette),
            "label": lambda lab: encode.encode_label_png(lab, num_classes),
        }
        for name, fn in coders.items():
            sizes, seconds = [], []
            for lab in labels:
                t0 = time.process_time()
                for _ in range(repeats):
                    data = fn(lab)
                seconds.append((time.process_time() - t0) / repeats)
                sizes.append(len(data))
            kib, ms = np.mean(sizes) / 1024, np.median(seconds) * 1e3
            print(f"level {level} {name:6s}: {kib:6.1f} KiB  {ms:6.2f} ms")


if __name__ == "__main__":
    main(sys.argv[1])
