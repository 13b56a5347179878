"""Diverse labelling batches: uncertain photos, but no two of the same wall.

Uncertainty alone sends near-copies (the same wall shot twice, a crop, a recompressed upload) in
one batch, and photos the model was trained on again. Among the most uncertain candidates (a pool
of ``pool_factor`` x the batch), a photo is skipped when its image embedding is a near-duplicate
(cosine similarity above ``max_similarity``) of a photo already picked, already queued, or in the
training set. Similarities are taken after centring on the mean embedding (of the training
photos, else of the candidates), since CLIP embeddings share a large common component: with random
weights two unrelated photos are at cosine 0.99 before centring. The rest is picked by k-center
greedy: the most uncertain first, then each time the candidate furthest (cosine distance) from
everything picked and known, so the batch spreads over the embedding space.
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
    while len(picked) < k and alive.any():
        if not picked and not has_known:
            choice = int(np.argmax(alive))  # the most uncertain photo opens the batch
        else:
            score = np.where(alive, 1.0 - nearest, -np.inf)  # cosine distance to the closest picked/known
            best = score.max()
            choice = int(np.nonzero(score >= best - 1e-9)[0][0])  # ties: the more uncertain
        picked.append(choice)
        alive[choice] = False
        sim = c @ c[choice]
        nearest = np.maximum(nearest, sim)
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
