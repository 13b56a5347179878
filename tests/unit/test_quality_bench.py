"""bench/quality.py's measuring parts: scores by the metrics module's rules, thresholds never tuned
on the images they score, and Roboflow's held-out folders with their leaked source photos."""

from __future__ import annotations

import numpy as np
import pytest

from bench.quality import Item, Scores, cross_fit, half_of, roboflow_items, scores, train_sources
from drywall_core.data.exports import open_export
from drywall_core.model.metrics import THRESHOLDS, dice, iou


def test_scores_follow_the_metrics_module() -> None:
    rng = np.random.default_rng(0)
    prob, gt = rng.random((40, 50)), rng.random((40, 50)) > 0.7
    s = scores(prob, gt)
    assert s.iou == pytest.approx([iou(prob >= t, gt) for t in THRESHOLDS])
    assert s.dice == pytest.approx([dice(prob >= t, gt) for t in THRESHOLDS])
    empty = scores(np.zeros((4, 4)), np.zeros((4, 4), bool))
    assert list(empty.iou) == [1.0] * len(THRESHOLDS), "nothing predicted of nothing scores 1"


def test_each_half_is_scored_at_the_threshold_tuned_on_the_other() -> None:
    sources = [f"src{i}" for i in range(40)]
    items = [Item(f"{s}.jpg", f"{s}.png", s) for s in sources]  # type: ignore[arg-type]
    best = {0: THRESHOLDS.index(0.2), 1: THRESHOLDS.index(0.8)}  # each half prefers its own threshold

    def image(half: int) -> Scores:
        curve = np.full(len(THRESHOLDS), 0.1)
        curve[best[half]] = 0.9
        return Scores(curve, curve / 2)

    per_image = [image(half_of(s)) for s in sources]
    assert {half_of(s) for s in sources} == {0, 1}
    miou, mdice, tuned = cross_fit(items, per_image)
    assert tuned == (0.8, 0.2), "half 0 is scored at half 1's best threshold, and back"
    assert miou == pytest.approx(0.1) and mdice == pytest.approx(0.05), "no image at its own best threshold"
    one = [items[0]]
    assert cross_fit(one, per_image[:1])[0] == pytest.approx(0.1), "one source photo: scored at 0.5, not its best"


def test_the_drywall_exports_roboflow_valid_folder_is_mostly_training_photos(drywall_export, tmp_path) -> None:
    export = open_export(drywall_export)
    items = roboflow_items(export, tmp_path)
    leaked = sum(it.source in train_sources(export) for it in items)
    assert len(items) == 100 and leaked == 97, (len(items), leaked)
