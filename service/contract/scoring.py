"""Confusion-matrix segmentation metrics (CamVid README definitions).

Numpy only: the service's evaluator uses it, and so does training-time
validation in ``model/`` (one definition of the metric for both sides). Pixels whose label is outside
``[0, num_classes)`` are ignored.

Tested by tests/service/offline/test_evaluate.py (a hand-computed confusion matrix, absent classes).
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[true, predicted]`` pixel counts over labelled pixels."""
    valid = (label >= 0) & (label < num_classes)
    idx = label[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(cm: np.ndarray) -> dict[str, object]:
    """IoU per class = TP / (TP + FP + FN); mIoU over classes; pixel accuracy."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / denom, np.nan)
    total = cm.sum()
    return {
        "miou": float(np.nanmean(iou)) if np.any(denom > 0) else float("nan"),
        "iou": [float(v) for v in iou],
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "pixels": int(total),
    }
