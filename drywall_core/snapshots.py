"""Dataset snapshots: a content id per dataset, and "is there anything new to train on?".

A snapshot id is the sha256 of a manifest listing, per image, the sha256 of the image, the sha256
of its mask and its split side. The same Roboflow version ingested twice gives the same id; any
changed pixel, annotation or split assignment gives another. A retrain whose snapshots, base model
and training config all equal those its champion was trained on has nothing new to learn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from drywall_core.fsutil import sha256_file
from drywall_core.samples import Sample


def snapshot_ids(samples: Sequence[Sample]) -> dict[str, str]:
    """Dataset name -> snapshot id of its samples."""
    lines: dict[str, list[str]] = {}
    for s in samples:
        lines.setdefault(s.dataset, []).append(f"{sha256_file(s.image)} {sha256_file(s.mask)} {s.side}")
    return {name: hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest() for name, rows in lines.items()}


def training_identity(snapshots: dict[str, str], base_fingerprint: str, train_config: dict[str, Any]) -> dict:
    """What a model was trained from; recorded in every published version's manifest."""
    return {
        "snapshots": dict(sorted(snapshots.items())),
        "base_fingerprint": base_fingerprint,
        "train_config": train_config,
    }


def nothing_new(candidate: dict[str, Any], champion_manifest: dict[str, Any] | None) -> list[str]:
    """Empty if the champion was trained from exactly ``candidate``; else what differs (for the log)."""
    if not champion_manifest:
        return ["no champion"]
    recorded = champion_manifest.get("trained_from")
    if not recorded:
        return ["the champion does not record what it was trained from"]
    return [
        f"{key} differs"
        for key in ("snapshots", "base_fingerprint", "train_config")
        if recorded.get(key) != candidate.get(key)
    ]
