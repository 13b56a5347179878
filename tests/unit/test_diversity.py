"""Diverse labelling batches: no near-duplicates, spread over the embedding space."""

from __future__ import annotations

import numpy as np

from drywall_core.field.diversity import coverage, diverse_order


def _clusters(seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """30 photos in 5 groups; group g's photos are near-copies of one another; listed most uncertain
    first, where the first 12 all come from groups 0 and 1."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 32))
    groups = [0, 1] * 6 + [2, 3, 4] * 6
    vectors = np.stack([centres[g] + 0.02 * rng.normal(size=32) for g in groups])
    return vectors, groups


def test_a_batch_holds_no_two_copies_of_one_wall_and_covers_the_groups() -> None:
    vectors, groups = _clusters()
    picked, skipped = diverse_order(vectors, 5, max_similarity=0.95)
    assert sorted(groups[i] for i in picked) == [0, 1, 2, 3, 4]
    assert picked[0] == 0, "the most uncertain photo opens the batch"
    assert {groups[s.index] for s in skipped} <= set(range(5)) and all(s.similarity > 0.95 for s in skipped)
    top = list(range(5))  # uncertainty alone: the first five, from two groups
    assert coverage(vectors, picked) < coverage(vectors, top)


def test_photos_like_queued_or_trained_ones_are_skipped() -> None:
    vectors, groups = _clusters()
    known = vectors[[0, 1]]  # groups 0 and 1 were queued or trained on
    picked, skipped = diverse_order(vectors, 5, known=known, max_similarity=0.95)
    assert {groups[i] for i in picked} == {2, 3, 4} and len(picked) == 3, "only three new walls exist"
    assert all(s.of == "known" for s in skipped if groups[s.index] in (0, 1))


def test_nothing_to_pick() -> None:
    assert diverse_order(np.zeros((0, 4)), 3) == ([], [])
    vectors, _ = _clusters()
    assert diverse_order(vectors, 0) == ([], [])
