"""Training/evaluation samples: (image, mask, task) triples assembled from validated exports.

Each export is resolved to its dataset registry entry (prompt synonyms, label strength), its
masks are rendered (incrementally) and its images are split by source photo.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from drywall_core.base.config import Settings
from drywall_core.data.datasets import DatasetRegistry, DatasetSpec, load_registry
from drywall_core.data.exports import open_export
from drywall_core.data.masks import render_masks
from drywall_core.data.slice_keys import SliceKeys, export_slices
from drywall_core.data.splits import split_by_source
from drywall_core.data.validation import resolve_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    image: Path
    mask: Path
    dataset: str
    side: str  # "train" or "val"
    source: str
    sha256: str | None = None  # of the image, when known (snapshots): spares hashing it again
    slices: SliceKeys | None = None  # site, camera, week where the dataset carries them (evaluation per slice)


def export_samples(
    export_root: Path,
    spec: DatasetSpec,
    masks_dir: Path,
    seed: int,
    val_fraction: float,
    workers: int = 0,
    progress: bool = False,
    site_pattern: re.Pattern[str] | None = None,
) -> list[Sample]:
    export = open_export(export_root)
    render_masks(export, masks_dir, workers=workers, progress=progress)
    plan = split_by_source(export, seed=seed, val_fraction=val_fraction)
    log.info(
        "split %s: %d train / %d val images from %d / %d source photos",
        export_root,
        len(plan.train),
        len(plan.val),
        len(plan.sources("train")),
        len(plan.sources("val")),
    )
    out = []
    slices = export_slices(export, site_pattern)
    for side, items in (("train", plan.train), ("val", plan.val)):
        for it in items:
            split_dir = export.splits[it.export_split].dir
            mask = masks_dir / it.export_split / f"{Path(it.file_name).stem}.png"
            keys = slices.get((it.export_split, it.file_name))
            out.append(Sample(split_dir / it.file_name, mask, spec.name, side, it.source, slices=keys))
    return out


def masks_dir_for(settings: Settings, export_root: Path) -> Path:
    """Where an export's masks live: ``$DRYWALL_HOME/masks/<export folder>-<path hash>``."""
    resolved = Path(export_root).resolve()
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:8]
    return Path(settings.home) / "masks" / f"{resolved.name}-{tag}"


def collect_samples(
    exports: Sequence[Path],
    settings: Settings,
    datasets: Sequence[str | None] | None = None,
    registry: DatasetRegistry | None = None,
    progress: bool = False,
) -> tuple[list[Sample], dict[str, DatasetSpec]]:
    """Samples of every export, with the dataset specs they use (``progress``: bars and a split line)."""
    registry = registry or load_registry(settings.datasets_file)
    names = list(datasets or [None] * len(exports))
    samples: list[Sample] = []
    specs: dict[str, DatasetSpec] = {}
    for root, name in zip(exports, names, strict=True):
        spec = resolve_dataset(open_export(root), registry, name)
        specs[spec.name] = spec
        samples += export_samples(
            root,
            spec,
            masks_dir_for(settings, root),
            settings.split_seed,
            settings.val_fraction,
            settings.mask_workers,
            progress,
            settings.slices.site_regex,
        )
    return samples, specs
