"""Field photos per slice (site, camera, capture week): drift of each slice against the reference,
and the model signals of each slice in a field summary. The keys themselves come from
:mod:`drywall_core.data.slice_keys`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from drywall_core.data.slice_keys import SLICE_KEYS, UNKNOWN


@dataclass(frozen=True)
class SliceDrift:
    """Drift of one slice's photos against the whole reference."""

    key: str  # site, camera or week
    value: str
    n_current: int
    tested: bool
    drift_detected: bool | None = None  # None: not tested
    drifted_share: float | None = None
    drifted_columns: tuple[str, ...] = ()
    embedding_score: float | None = None
    signals: dict[str, float] | None = None  # mean model signal per column (fg fraction, confidence)
    note: str = ""


def groups(keys: pd.DataFrame) -> list[tuple[str, str, list[str]]]:
    """(key, value, paths) for every slice value present, largest first."""
    out = []
    for key in SLICE_KEYS:
        for value, part in keys.groupby(key, sort=False):
            out.append((key, str(value), list(part["path"])))
    return sorted(out, key=lambda g: (SLICE_KEYS.index(g[0]), -len(g[2]), g[1]))


SIGNAL_PREFIXES = ("fg_fraction__", "confidence__")


def slice_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    keys: pd.DataFrame,
    min_photos: int,
    report: Callable[[pd.DataFrame, pd.DataFrame], dict[str, Any]],
) -> list[SliceDrift]:
    """Each slice of ``current`` (rows matched to ``keys`` by ``path``) tested against the whole
    reference by ``report`` (the run's own drift test, returning its summary), when it has
    ``min_photos``; a smaller one says so and is not tested, nor is a slice that is every photo.

    Slice verdicts are read beside the run's verdict, not folded into it: testing every slice of
    three keys at 5% each would raise an alarm somewhere on most nights."""
    signal_cols = [c for c in current.columns if str(c).startswith(SIGNAL_PREFIXES)]
    out = []
    for key, value, paths in groups(keys):
        part = current[current["path"].isin(paths)]
        signals = {c: float(part[c].mean()) for c in signal_cols} if len(part) else None
        if len(part) < min_photos or len(part) == len(current):
            note = (
                "every photo: the run's verdict"
                if len(part) == len(current)
                else f"too few photos to test ({len(part)} < {min_photos})"
            )
            out.append(SliceDrift(key, value, len(part), False, signals=signals, note=note))
            continue
        summary = report(reference, part)
        emb = summary.get("embeddings") or {}
        out.append(
            SliceDrift(
                key,
                value,
                len(part),
                True,
                bool(summary["drift_detected"]),
                float(summary["drifted_share"]),
                tuple(summary["drifted_columns"]),
                emb.get("score"),
                signals,
            )
        )
    return out


def slice_signals(frame: pd.DataFrame, min_photos: int) -> list[dict[str, Any]]:
    """A field summary (one row per photo and prompt) per site, camera and week: photos, and per
    prompt the mean confidence, uncertain share and (cracks) cracks per photo; a slice under
    ``min_photos`` is listed with its count and a note rather than means of a handful."""
    if not len(frame) or not set(SLICE_KEYS) <= set(frame.columns):
        return []
    rows = []
    for key in SLICE_KEYS:
        for value, part in frame.fillna({key: UNKNOWN}).groupby(key, sort=True):
            photos = int(part["sha256"].nunique())
            row: dict[str, Any] = {"key": key, "value": str(value), "photos": photos}
            if photos < min_photos:
                row["note"] = f"too few photos ({photos} < {min_photos})"
            else:
                for prompt, p in part.groupby("prompt", sort=True):
                    row[f"confidence {prompt}"] = round(float(p["mean_confidence"].mean()), 4)
                    row[f"uncertain {prompt}"] = round(float(p["uncertain_share"].mean()), 4)
                    if "n_cracks" in p and p["n_cracks"].notna().any():
                        row[f"cracks/photo {prompt}"] = round(float(p["n_cracks"].mean()), 2)
            rows.append(row)
    return sorted(rows, key=lambda r: (SLICE_KEYS.index(r["key"]), -r["photos"], r["value"]))
