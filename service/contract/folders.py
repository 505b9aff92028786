"""Image/label folder pairs (e.g. CamVid ``val/`` + ``valannot/``), matched by file stem.

Tested by tests/service/offline/test_evaluate.py (evaluate pairs its folders) and
tests/model/test_train.py (training reads folder pairs through model/folder.py).
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})


def paired_files(images: Path, labels: Path) -> list[tuple[Path, Path]]:
    """Pairs sorted by name; an image without a label is an error, not a skip."""
    if not images.is_dir():
        raise FileNotFoundError(f"image folder not found: {images}")
    if not labels.is_dir():
        raise FileNotFoundError(f"label folder not found: {labels}")
    by_stem = {p.stem: p for p in labels.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = []
    for img in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if img.stem not in by_stem:
            raise FileNotFoundError(f"no label for {img.name} in {labels}")
        pairs.append((img, by_stem[img.stem]))
    if not pairs:
        raise FileNotFoundError(f"no images in {images}")
    return pairs
