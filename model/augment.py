"""Training augmentation of the official recipe (hszhao/semseg ``util/transform``).

Random scale (0.5-2.0), random rotation (-10..10 degrees), mirror, Gaussian
blur, then a random crop; padding takes the mean colour in the image and the
ignore label in the label map. Pure numpy/OpenCV on HWC uint8 images.

Tested by tests/model/test_train.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    crop: tuple[int, int] = (288, 288)
    scale: tuple[float, float] = (0.5, 2.0)
    rotate: tuple[float, float] = (-10.0, 10.0)
    blur_p: float = 0.5
    flip_p: float = 0.5
    rotate_p: float = 0.5
    ignore_index: int = 255
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)


def random_scale(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator,
                 lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    s = rng.uniform(lo, hi)
    img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
    lab = cv2.resize(lab, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST)
    return img, lab


def random_rotate(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
                  ) -> tuple[np.ndarray, np.ndarray]:
    angle = rng.uniform(*cfg.rotate)
    h, w = lab.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=cfg.mean)
    lab = cv2.warpAffine(lab, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=cfg.ignore_index)
    return img, lab


def pad_to(img: np.ndarray, lab: np.ndarray, ch: int, cw: int, cfg: AugmentConfig
           ) -> tuple[np.ndarray, np.ndarray]:
    h, w = lab.shape
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph == 0 and pw == 0:
        return img, lab
    top, left = ph // 2, pw // 2
    img = cv2.copyMakeBorder(img, top, ph - top, left, pw - left, cv2.BORDER_CONSTANT, value=cfg.mean)
    lab = cv2.copyMakeBorder(lab, top, ph - top, left, pw - left, cv2.BORDER_CONSTANT,
                             value=cfg.ignore_index)
    return img, lab


def augment(img: np.ndarray, lab: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
            ) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: HWC uint8 RGB image and HW uint8 label, both cropped."""
    img, lab = random_scale(img, lab, rng, *cfg.scale)
    if rng.random() < cfg.rotate_p:
        img, lab = random_rotate(img, lab, rng, cfg)
    if rng.random() < cfg.blur_p:
        img = cv2.GaussianBlur(img, (5, 5), 0)
    if rng.random() < cfg.flip_p:
        img, lab = img[:, ::-1], lab[:, ::-1]
    ch, cw = cfg.crop
    img, lab = pad_to(img, lab, ch, cw, cfg)
    h, w = lab.shape
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return (np.ascontiguousarray(img[y:y + ch, x:x + cw]),
            np.ascontiguousarray(lab[y:y + ch, x:x + cw]))
