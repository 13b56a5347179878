"""Ingest one export: validate -> render masks -> split -> dataset snapshot in the artifact store.

:func:`drywall_core.stages.data.ingest` composes these steps for ``drywall ingest``; the ingest flow
runs the same stage steps as tasks (so each shows in the UI, and rendering can fan out). Either way
the result is a snapshot reference ``<dataset>/<snapshot id>`` that every later stage takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drywall_core.base.config import Settings
from drywall_core.base.errors import CheckFailed
from drywall_core.base.storage import ArtifactStore
from drywall_core.data.datasets import DatasetSpec, load_registry
from drywall_core.data.exports import open_export
from drywall_core.data.snapshots import build_manifest, publish_snapshot
from drywall_core.data.splits import split_by_source
from drywall_core.data.validation import (
    ValidationReport,
    resolve_dataset,
    validate_export,
)


def validation_summary(report: ValidationReport) -> dict[str, Any]:
    """What a snapshot manifest keeps of its Great Expectations run."""
    return {
        "success": report.success,
        "splits": [
            {"split": s.split, "images": s.images, "annotations": s.annotations, "failures": len(s.failures)}
            for s in report.splits
        ],
    }


def refuse_failed(report: ValidationReport, export_root: Path) -> None:
    """A failed validation stops the stage, naming the export and its first failed expectation."""
    if not report.success:
        lines = report.lines()
        raise CheckFailed(f"{export_root}: validation failed ({len(lines)} failed expectations): {lines[0]}")


def validated_samples(
    exports: list[Path], datasets: list[str | None] | None, settings: Settings, progress: bool = False
) -> tuple[list[Any], dict[str, DatasetSpec]]:
    """Samples of local exports for `drywall train`, each validated first as the ingest flow does."""
    from drywall_core.data.samples import collect_samples

    registry = load_registry(settings.datasets_file)
    names = list(datasets or [None] * len(exports))
    for root, name in zip(exports, names, strict=True):
        export = open_export(Path(root))
        refuse_failed(validate_export(export, resolve_dataset(export, registry, name), settings), Path(root))
    return collect_samples(exports, settings, names, registry, progress=progress)


def snapshot_export(
    export_root: Path,
    spec: DatasetSpec,
    masks_dir: Path,
    settings: Settings,
    store: ArtifactStore,
    validation: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Split a validated, rendered export and publish it as a snapshot; returns its record."""
    export = open_export(Path(export_root))
    plan = split_by_source(export, settings.split_seed, settings.val_fraction)
    manifest, files = build_manifest(export, spec, Path(masks_dir), plan, validation, settings.slices.site_regex)
    return publish_snapshot(store, manifest, files, progress=progress)
