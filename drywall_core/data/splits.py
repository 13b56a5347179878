"""Leakage-free train/val split by source photo.

Roboflow augments and crops one photo into several images (``<source>_jpg.rf.<hash>.jpg``) and
its own train/valid split puts variants of one photo on both sides (57 of the 59 sources of the
real drywall ``valid`` split also appear in ``train``). We pool every image of the export and
assign whole sources. A source goes to val when a seeded hash of its name falls under
``val_fraction``: deterministic, and stable when a new dataset version adds photos (old photos
keep their side, so a retrain never validates on images an earlier model trained on).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from drywall_core.base.fsutil import atomic_write_text
from drywall_core.data.exports import Export

SOURCE_SEP = ".rf."


def source_of(file_name: str) -> str:
    """The source photo of a Roboflow image: the part of the file name before ``.rf.``."""
    name = Path(file_name).name
    return name.split(SOURCE_SEP, 1)[0] if SOURCE_SEP in name else Path(name).stem


def _unit_hash(seed: int, source: str) -> float:
    digest = hashlib.sha256(f"{seed}:{source}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class SplitItem:
    export_split: str
    file_name: str
    source: str


@dataclass
class SplitPlan:
    seed: int
    val_fraction: float
    train: list[SplitItem] = field(default_factory=list)
    val: list[SplitItem] = field(default_factory=list)

    def sources(self, side: str) -> set[str]:
        return {i.source for i in getattr(self, side)}

    def to_json(self) -> str:
        body = asdict(self)
        body["counts"] = {
            "train_images": len(self.train),
            "val_images": len(self.val),
            "train_sources": len(self.sources("train")),
            "val_sources": len(self.sources("val")),
        }
        return json.dumps(body, indent=2)


def split_by_source(export: Export, seed: int = 42, val_fraction: float = 0.2) -> SplitPlan:
    """Assign every image of every export split to train or val, whole sources at a time."""
    by_source: dict[str, list[SplitItem]] = defaultdict(list)
    for split in export.splits.values():
        for img in split.images:
            fn = str(img["file_name"])
            by_source[source_of(fn)].append(SplitItem(split.name, fn, source_of(fn)))
    score = {s: _unit_hash(seed, s) for s in by_source}
    val = {s for s, h in score.items() if h < val_fraction}
    if not val and len(by_source) > 1:  # tiny sets: keep at least one val source
        val = {min(score, key=score.get)}
    if len(val) == len(by_source) and len(by_source) > 1:
        val.discard(max(val, key=score.get))
    plan = SplitPlan(seed=seed, val_fraction=val_fraction)
    for src in sorted(by_source):
        (plan.val if src in val else plan.train).extend(by_source[src])
    return plan


def write_plan(plan: SplitPlan, path: Path) -> None:
    atomic_write_text(Path(path), plan.to_json())
