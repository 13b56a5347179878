"""Diverse labelling batches: uncertain photos, but no two of the same wall.

Uncertainty alone sends near-copies (the same wall shot twice, a crop, a recompressed upload) in
one batch, and photos the model was trained on again. Among the most uncertain candidates (a pool
of ``pool_factor`` x the batch), a photo is skipped when its image embedding is a near-duplicate
(cosine similarity above ``max_similarity``) of a photo already picked, already queued, or in the
training set. Similarities are taken after centring on the mean embedding (of the training
photos, else of the candidates), since CLIP embeddings share a large common component: with random
weights two unrelated photos are at cosine 0.99 before centring. The rest is picked greedily for
coverage (facility location): the most uncertain first, then each time the candidate that most
lowers the candidates' mean cosine distance to their nearest picked or known photo, so the batch
stands for the whole pool. k-center greedy (each time the candidate furthest from everything
picked) was tried first: it minimises the largest distance by picking outliers, and on real crack
photos covered the pool worse than uncertainty alone (bench/label_diversity.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Skipped:
    index: int  # row of the candidate in the ranked pool
    similarity: float
    of: str  # "picked", "known" (queued or trained on)


def unit(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim != 2:
        return np.zeros((0, 0))
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def diverse_order(
    candidates: np.ndarray, k: int, known: np.ndarray | None = None, max_similarity: float = 0.95
) -> tuple[list[int], list[Skipped]]:
    """Indices of up to ``k`` candidates (rows ranked most uncertain first), in picking order, and
    the ones skipped as near-duplicates. ``known``: embeddings of photos queued or trained on."""
    n = len(candidates)
    if n == 0 or k <= 0:
        return [], []
    has_known = known is not None and len(known) > 0
    centre = np.mean(known if has_known else candidates, axis=0)
    c = unit(np.asarray(candidates) - centre)
    skipped: list[Skipped] = []
    alive = np.ones(n, dtype=bool)
    nearest = np.full(n, -1.0)  # highest similarity to anything picked or known
    if has_known:
        sim_known = c @ unit(np.asarray(known) - centre).T
        nearest = sim_known.max(axis=1)
        for i in np.nonzero(nearest > max_similarity)[0]:
            skipped.append(Skipped(int(i), float(nearest[i]), "known"))
            alive[i] = False
    picked: list[int] = []
    pairwise = c @ c.T
    gap = 1.0 - nearest  # each candidate's cosine distance to its closest picked or known photo (2: none)
    if not has_known:
        gap = np.full(n, 2.0)
    while len(picked) < k and alive.any():
        if not picked and not has_known:
            choice = int(np.argmax(alive))  # the most uncertain photo opens the batch
        else:
            # how much each candidate would lower the pool's distances to their nearest pick
            gain = np.maximum(gap[:, None] - (1.0 - pairwise), 0.0).sum(axis=0)
            score = np.where(alive, gain, -np.inf)
            best = score.max()
            choice = int(np.nonzero(score >= best - 1e-9)[0][0])  # ties: the more uncertain
        picked.append(choice)
        alive[choice] = False
        sim = pairwise[choice]
        nearest = np.maximum(nearest, sim)
        gap = np.minimum(gap, 1.0 - sim)
        for i in np.nonzero(alive & (sim > max_similarity))[0]:
            skipped.append(Skipped(int(i), float(sim[i]), "picked"))
            alive[i] = False
    return picked, skipped


def coverage(candidates: np.ndarray, picked: list[int]) -> float:
    """Mean cosine distance (centred) from every candidate to its nearest picked photo (lower: better covered)."""
    if not picked:
        return 1.0
    c = unit(np.asarray(candidates) - np.mean(candidates, axis=0))
    return float((1.0 - (c @ c[picked].T).max(axis=1)).mean())
