"""The two drift tests, as the drift report runs them: image statistics column by column, and the
CLIP image embeddings as one multivariate sample.

Two-sample tests on an encoder's representation are the strongest shift detectors in the
literature (Rabanser et al., "Failing Loudly", 2019); Evidently runs them (``EmbeddingsDrift``).
Its methods are called here directly so that the benchmark (bench/drift_power.py) measures exactly
what the report decides with:

- ``pca-ks``: the reference's first 20 principal components, a Kolmogorov-Smirnov test each at
  p < 0.05 / 20 (Bonferroni): drift when any one drifts (Rabanser et al.'s best detector);
- ``mmd``: maximum mean discrepancy, RBF kernel at the median distance, drift above 0.015;
- ``classifier``: a linear domain classifier, drift when its ROC AUC beats the 95th percentile of
  random guesses;
- ``distance``: euclidean distance of the means, drift above its 95th bootstrap percentile;
- ``ratio``: share of embedding components whose Wasserstein distance drifts, above 20%.

The image statistics decide by the share of drifted columns (``share``, Evidently's preset), or
by any one column at a Bonferroni-corrected level (``bonferroni``): a blur moves two of thirteen
statistics, which a 50% share never sees. Which rule (``DRYWALL_DRIFT_FEATURE_RULE``), which test
decides ``drift_detected`` (``DRYWALL_DRIFT_DECIDER``: ``features``, ``embeddings`` or ``either``)
and which embedding test runs (``DRYWALL_DRIFT_EMBEDDING_TEST``) are settings whose defaults the
benchmark chose; see the README.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

EmbeddingTest = Literal["pca-ks", "mmd", "classifier", "distance", "ratio"]
EMBEDDING_TESTS: tuple[EmbeddingTest, ...] = ("pca-ks", "mmd", "classifier", "distance", "ratio")
FeatureRule = Literal["bonferroni", "share"]
PCA_COMPONENTS = 20
ALPHA = 0.05
Decider = Literal["features", "embeddings", "either"]
DECIDERS: tuple[Decider, ...] = ("features", "embeddings", "either")
EMBEDDING_PREFIX = "emb_"
EMBEDDINGS_NAME = "image_embedding"
MIN_PHOTOS = 5  # an embedding test on fewer photos a side says nothing


def drift_method(name: EmbeddingTest, n_reference: int = 1000) -> Any:
    """Evidently's drift method object for an embedding test."""
    from evidently.metrics.embeddings import DistanceDriftMethod, MMDDriftMethod, ModelDriftMethod, RatioDriftMethod

    k = max(1, min(PCA_COMPONENTS, n_reference - 1))
    methods = {
        # Rabanser et al.'s best detector: a few principal components, a K-S test each, Bonferroni
        "pca-ks": lambda: RatioDriftMethod(
            component_stattest="ks", component_stattest_threshold=ALPHA / k, threshold=0.0, pca_components=k
        ),
        "mmd": lambda: MMDDriftMethod(),
        "classifier": lambda: ModelDriftMethod(bootstrap=True),
        "distance": lambda: DistanceDriftMethod(bootstrap=True),
        "ratio": lambda: RatioDriftMethod(),
    }
    if name not in methods:
        raise ValueError(f"unknown embedding test '{name}' (known: {', '.join(EMBEDDING_TESTS)})")
    return methods[name]()


@dataclass(frozen=True)
class EmbeddingDrift:
    method: str
    score: float
    drift_detected: bool
    n_reference: int
    n_current: int


def embedding_test(reference: np.ndarray, current: np.ndarray, method: EmbeddingTest = "mmd") -> EmbeddingDrift:
    """One Evidently embeddings-drift test of two samples of embeddings (rows are photos)."""
    ref = pd.DataFrame(np.asarray(reference, dtype=np.float64))
    cur = pd.DataFrame(np.asarray(current, dtype=np.float64))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        score, drifted, _ = drift_method(method, len(ref))(cur, ref)
    return EmbeddingDrift(method, float(score), bool(drifted), len(ref), len(cur))


@dataclass(frozen=True)
class FeatureDrift:
    drift_detected: bool
    drifted_share: float
    drifted: list[str] = field(default_factory=list)


def feature_drift(
    reference: pd.DataFrame, current: pd.DataFrame, share: float = 0.5, rule: FeatureRule = "share"
) -> FeatureDrift:
    """The data-drift preset's decision on feature columns: each column by Evidently's default test
    for its type and size (K-S for these). ``share``: drift when at least ``share`` of the columns
    drift at p < 0.05; ``bonferroni``: when any one drifts at p < 0.05 / columns."""
    from evidently.legacy.calculations.stattests import get_stattest
    from evidently.legacy.core import ColumnType

    drifted = []
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for col in reference.columns:
            r, c = reference[col].astype(float), current[col].astype(float)
            test = get_stattest(r, c, ColumnType.Numerical, None)
            if test(r, c, ColumnType.Numerical, column_threshold(rule, len(reference.columns))).drifted:
                drifted.append(str(col))
    frac = len(drifted) / max(len(reference.columns), 1)
    return FeatureDrift(features_drifted(rule, frac, len(drifted), share), frac, drifted)


def column_threshold(rule: FeatureRule, columns: int) -> float | None:
    """The p-value under which one column drifts (None: the test's own default, 0.05)."""
    return ALPHA / max(columns, 1) if rule == "bonferroni" else None


def features_drifted(rule: FeatureRule, share_drifted: float, n_drifted: int, share: float) -> bool:
    return n_drifted >= 1 if rule == "bonferroni" else share_drifted >= share


def embedding_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if str(c).startswith(EMBEDDING_PREFIX)]


def with_embeddings(frame: pd.DataFrame, vectors: np.ndarray) -> pd.DataFrame:
    """``frame`` with one ``emb_<i>`` column per embedding dimension (rows aligned)."""
    cols = pd.DataFrame(
        np.asarray(vectors, dtype=np.float32), columns=[f"{EMBEDDING_PREFIX}{i:04d}" for i in range(vectors.shape[1])]
    )
    return pd.concat([frame.drop(columns=embedding_columns(frame)).reset_index(drop=True), cols], axis=1)


def decide(decider: Decider, features: bool, embeddings: EmbeddingDrift | None) -> tuple[bool, str]:
    """The verdict and the test that gave it (``embeddings`` falls back to the features when the
    embeddings were not compared, and says so)."""
    if decider == "features" or embeddings is None:
        why = "image statistics" + ("" if decider == "features" else " (no embeddings on both sides)")
        return features, why
    if decider == "embeddings":
        return embeddings.drift_detected, f"embeddings ({embeddings.method})"
    return features or embeddings.drift_detected, f"image statistics or embeddings ({embeddings.method})"
