"""Data stages: pull a Roboflow version, find the latest ones, validate, render masks, snapshot.

``drywall pull`` / ``validate`` / ``ingest`` and the ingest flow's tasks call these, so a dataset is
pulled, checked and stored one way whichever route brought it in.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drywall_core.base.markup import md
from drywall_core.stages.context import Context


@dataclass
class Pulled:
    out: Path
    images: int
    already: bool = False  # ``out`` held this version, complete: nothing downloaded


def pull(
    ctx: Context, workspace: str, project: str, version: int, out: Path, overwrite: bool = False, reuse: bool = False
) -> Pulled:
    """Download a dataset version (COCO) with the Roboflow SDK; ``out`` appears only when complete.
    ``reuse``: a folder that already holds exactly this version, complete, is kept as it is."""
    from drywall_core.data.sources import already_pulled, pull_roboflow

    s = ctx.settings
    if reuse and already_pulled(Path(out), workspace, project, version):
        ctx.reporter.info(f"{workspace}/{project}/{version} already pulled: {out}")
        return Pulled(Path(out), 0, already=True)
    ctx.reporter.info(f"pulling {workspace}/{project}/{version} from Roboflow")
    lineage = pull_roboflow(
        workspace, project, version, Path(out), s.roboflow_key(), retries=s.pull_retries,
        backoff_s=s.pull_backoff_s, overwrite=overwrite or reuse, api_url=s.roboflow_api_url,
    )  # fmt: skip
    images = sum(lineage.get("images", {}).values())
    ctx.reporter.info(f"pulled {workspace}/{project}/{version}: {images} images")
    return Pulled(Path(out), images)


@dataclass
class RoboflowVersion:
    dataset: str
    workspace: str
    project: str
    version: int


def latest_versions(ctx: Context) -> list[RoboflowVersion]:
    """The newest Roboflow version of every registered dataset that names its Roboflow project."""
    from drywall_core.base.errors import InputError
    from drywall_core.data.sources import latest_version

    s = ctx.settings
    found = []
    for spec in ctx.datasets.datasets.values():
        if spec.roboflow is None:
            continue
        ws, proj = spec.roboflow.workspace, spec.roboflow.project
        v = latest_version(
            ws, proj, s.roboflow_key(), retries=s.pull_retries, backoff_s=s.pull_backoff_s, api_url=s.roboflow_api_url
        )
        ctx.reporter.info(f"dataset {spec.name}: latest Roboflow version {ws}/{proj}/{v}")
        found.append(RoboflowVersion(spec.name, ws, proj, v))
    if not found:
        raise InputError(f"no dataset in {s.datasets_file or 'datasets.yaml'} names its Roboflow workspace/project")
    return found


@dataclass
class Validated:
    export: Path
    spec: Any  # DatasetSpec
    report: Any  # ValidationReport
    report_path: Path | None

    @property
    def success(self) -> bool:
        return bool(self.report.success)

    def summary(self) -> dict[str, Any]:
        from drywall_core.data.ingest import validation_summary

        return validation_summary(self.report)


def validate(ctx: Context, export: Path, dataset: str | None = None, report: Path | None = None) -> Validated:
    """The Great Expectations suite on one export (JSON report and Data Docs beside ``report``).
    No half-built Data Docs survive an interrupt; a failed check is returned, not raised."""
    from drywall_core.base.fsutil import naming_full_disk
    from drywall_core.data.exports import open_export
    from drywall_core.data.validation import fresh_docs_dir, resolve_dataset, validate_export, write_report

    exp = open_export(Path(export))
    spec = resolve_dataset(exp, ctx.datasets, dataset)
    docs = fresh_docs_dir(report) if report else None
    try:
        with naming_full_disk(docs or report or export):
            result = validate_export(exp, spec, ctx.settings, docs_dir=docs)
    except BaseException:
        if docs:
            shutil.rmtree(docs, ignore_errors=True)
        raise
    if report:
        with naming_full_disk(report):
            write_report(result, report)
    if not result.success:
        failures = "\n".join(f"- {md(line)}" for line in result.lines())
        ctx.reporter.markdown(f"validation-failures-{spec.name}", f"## Validation failed\n\n{failures}")
    return Validated(Path(export), spec, result, report)


def refuse(validated: Validated) -> None:
    """A failed validation stops the stage, naming the export and its first failed expectation."""
    from drywall_core.data.ingest import refuse_failed

    refuse_failed(validated.report, validated.export)


def render(ctx: Context, export: Path, out: Path | None = None) -> Path:
    """The export's masks, rendered incrementally (``$DRYWALL_HOME/masks/...`` unless ``out``)."""
    from drywall_core.data.exports import open_export
    from drywall_core.data.masks import render_masks
    from drywall_core.data.samples import masks_dir_for

    out = Path(out) if out else masks_dir_for(ctx.settings, Path(export))
    stats = render_masks(open_export(Path(export)), out, workers=ctx.settings.mask_workers, progress=False)
    ctx.reporter.info(f"masks: {stats.rendered} rendered, {stats.skipped} unchanged, {stats.removed} removed")
    return out


def dataset_of(ctx: Context, export: Path, dataset: str | None = None) -> Any:
    """The registry entry of an export: the one named, else the one its categories match."""
    from drywall_core.data.exports import open_export
    from drywall_core.data.validation import resolve_dataset

    return resolve_dataset(open_export(Path(export)), ctx.datasets, dataset)


def snapshot(
    ctx: Context, export: Path, dataset: str | None, masks: Path, validation: dict[str, Any] | None
) -> dict[str, Any]:
    """Split a validated export by source photo and store it as a content-addressed snapshot."""
    from drywall_core.data.ingest import snapshot_export

    spec = dataset_of(ctx, export, dataset)
    record = snapshot_export(Path(export), spec, Path(masks), ctx.settings, ctx.store, validation)
    ctx.reporter.info(f"snapshot {record['ref']} ({record['uploaded_files']} files uploaded): {record['uri']}")
    return record


def ingest(ctx: Context, export: Path, dataset: str | None = None, report: Path | None = None) -> dict[str, Any]:
    """Validate, render, split and snapshot one export; a failed validation stores nothing."""
    ctx.reporter.info(f"ingesting {export}: validating")
    validated = validate(ctx, export, dataset, report)
    refuse(validated)
    record = snapshot(ctx, export, validated.spec.name, render(ctx, export), validated.summary())
    return {**record, "report": str(report) if report else None, "validation": validated.summary()}
