"""Segmentation metrics: IoU, Dice, a threshold sweep, and a tolerance-aware boundary F1.

Empty-mask convention (documented in the README and tested):
- ground truth empty and prediction empty: IoU = Dice = boundary F1 = 1 (a correct "nothing here");
- exactly one of them empty: IoU = Dice = boundary F1 = 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = pred.astype(bool), gt.astype(bool)
    union = np.logical_or(pred, gt).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(pred, gt).sum() / union)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = pred.astype(bool), gt.astype(bool)
    total = pred.sum() + gt.sum()
    if total == 0:
        return 1.0
    return float(2 * np.logical_and(pred, gt).sum() / total)


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=0)


def boundary_f1(pred: np.ndarray, gt: np.ndarray, tolerance: float = 2.0) -> float:
    """F1 of boundary pixels matched within ``tolerance`` px (a 1-px crack shifted 2 px still scores).

    Precision: share of predicted boundary pixels within ``tolerance`` of a true boundary pixel;
    recall: share of true boundary pixels within ``tolerance`` of a predicted one.
    """
    pred, gt = pred.astype(bool), gt.astype(bool)
    bp, bg = _boundary(pred), _boundary(gt)
    if not bp.any() and not bg.any():
        return 1.0
    if not bp.any() or not bg.any():
        return 0.0
    dist_to_gt = ndimage.distance_transform_edt(~bg)
    dist_to_pred = ndimage.distance_transform_edt(~bp)
    precision = float((dist_to_gt[bp] <= tolerance).mean())
    recall = float((dist_to_pred[bg] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def sweep(prob: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> dict[float, float]:
    """IoU of ``prob >= t`` for each threshold."""
    return {t: iou(prob >= t, gt) for t in thresholds}


def best_threshold(sweeps: Sequence[dict[float, float]]) -> tuple[float, float]:
    """The threshold with the highest mean IoU over images, and that mean."""
    if not sweeps:
        return 0.5, 0.0
    means = {t: float(np.mean([s[t] for s in sweeps])) for t in sweeps[0]}
    t = max(means, key=lambda k: (means[k], -abs(k - 0.5)))
    return t, means[t]
