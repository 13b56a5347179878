"""Metrics against hand-computed cases, including the empty-mask convention."""

from __future__ import annotations

import numpy as np
import pytest

from drywall_core.model.metrics import THRESHOLDS, best_threshold, boundary_f1, dice, iou, sweep


def _mask(shape=(10, 10), box=None) -> np.ndarray:
    m = np.zeros(shape, bool)
    if box:
        y0, y1, x0, x1 = box
        m[y0:y1, x0:x1] = True
    return m


def test_iou_and_dice_by_hand() -> None:
    gt = _mask(box=(0, 4, 0, 4))  # 16 px
    pred = _mask(box=(2, 6, 0, 4))  # 16 px, 8 overlap
    assert iou(pred, gt) == pytest.approx(8 / 24)
    assert dice(pred, gt) == pytest.approx(2 * 8 / 32)
    assert iou(gt, gt) == 1.0 and dice(gt, gt) == 1.0
    assert iou(_mask(box=(5, 6, 5, 6)), gt) == 0.0


def test_empty_mask_convention() -> None:
    empty, some = _mask(), _mask(box=(1, 3, 1, 3))
    assert iou(empty, empty) == 1.0 and dice(empty, empty) == 1.0 and boundary_f1(empty, empty) == 1.0
    assert iou(some, empty) == 0.0 and dice(some, empty) == 0.0 and boundary_f1(some, empty) == 0.0
    assert iou(empty, some) == 0.0 and dice(empty, some) == 0.0 and boundary_f1(empty, some) == 0.0


def test_boundary_f1_tolerates_a_two_pixel_shift_of_a_thin_crack() -> None:
    gt = np.zeros((64, 64), bool)
    gt[10:50, 20] = True  # a 1-px vertical crack
    shifted = np.roll(gt, 2, axis=1)
    assert iou(shifted, gt) == 0.0
    assert boundary_f1(shifted, gt, tolerance=2) == pytest.approx(1.0)
    far = np.roll(gt, 6, axis=1)
    assert boundary_f1(far, gt, tolerance=2) == 0.0


def test_threshold_sweep_picks_best() -> None:
    gt = _mask(box=(0, 5, 0, 10))
    prob = np.where(gt, 0.35, 0.05)  # a confident-but-low model: only thresholds <= 0.3 find the object
    s = sweep(prob, gt)
    assert list(s) == list(THRESHOLDS)
    assert s[0.3] == 1.0 and s[0.5] == 0.0
    t, m = best_threshold([s])
    assert m == 1.0 and t in (0.1, 0.2, 0.3)
    assert t == 0.3, "ties resolve to the threshold closest to 0.5"
