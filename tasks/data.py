"""Data-plane tasks: pull/copy/synthesise, validate, render masks, snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from drywall_core.config import get_settings
from drywall_core.datasets import load_registry
from drywall_core.exports import open_export
from drywall_core.ingest import refuse_failed, snapshot_export, validation_summary
from drywall_core.markup import md
from drywall_core.masks import render_masks
from drywall_core.sources import already_pulled, copy_local_export, generate_synthetic, latest_version, pull_roboflow
from drywall_core.storage import store_from_settings
from drywall_core.validation import fresh_docs_dir, resolve_dataset, validate_export, write_report
from tasks.artifacts import link, markdown, upload_report


@task(retries=3, retry_delay_seconds=exponential_backoff(5), retry_jitter_factor=0.5)
def pull_task(workspace: str, project: str, version: int, out: str) -> str:
    """Roboflow download (skipped when ``out`` already holds that version, complete); the SDK call
    retries itself, this retries the whole pull on top."""
    s = get_settings()
    if already_pulled(Path(out), workspace, project, version):
        get_run_logger().info("%s/%s/%s already pulled: %s", workspace, project, version, out)
        return out
    lineage = pull_roboflow(
        workspace,
        project,
        version,
        Path(out),
        s.roboflow_key(),
        retries=s.pull_retries,
        backoff_s=s.pull_backoff_s,
        overwrite=True,
        api_url=s.roboflow_api_url,
    )
    get_run_logger().info("pulled %s/%s/%s: %s images", workspace, project, version, lineage["images"])
    return out


@task(retries=3, retry_delay_seconds=exponential_backoff(5), retry_jitter_factor=0.5)
def latest_versions_task() -> list[dict[str, Any]]:
    """The newest Roboflow version of every dataset in the registry that names its Roboflow project."""
    s = get_settings()
    found = []
    for spec in load_registry(s.datasets_file).datasets.values():
        if spec.roboflow is None:
            continue
        ws, proj = spec.roboflow.workspace, spec.roboflow.project
        v = latest_version(
            ws, proj, s.roboflow_key(), retries=s.pull_retries, backoff_s=s.pull_backoff_s, api_url=s.roboflow_api_url
        )
        get_run_logger().info("dataset %s: latest Roboflow version %s/%s/%d", spec.name, ws, proj, v)
        found.append({"dataset": spec.name, "workspace": ws, "project": proj, "version": v})
    if not found:
        raise ValueError(f"no dataset in {s.datasets_file or 'datasets.yaml'} names its Roboflow workspace/project")
    return found


@task
def local_task(path: str, out: str) -> str:
    copy_local_export(Path(path), Path(out), overwrite=True)
    return out


@task
def synthetic_task(out: str, seed: int = 0) -> dict[str, str]:
    paths = generate_synthetic(Path(out), seed=seed, overwrite=True)
    return {k: str(v) for k, v in paths.items()}


@task
def validate_task(export: str, report_dir: str, dataset: str | None = None) -> dict[str, Any]:
    """GX validation; on failure the report is linked in the UI and the task fails (nothing downstream runs)."""
    s = get_settings()
    exp = open_export(Path(export))
    spec = resolve_dataset(exp, load_registry(s.datasets_file), dataset)
    report_path = Path(report_dir) / f"{spec.name}-validation.json"
    report = validate_export(exp, spec, s, docs_dir=fresh_docs_dir(report_path))
    write_report(report, report_path)
    run_id = str(TaskRunContext.get().task_run.flow_run_id)
    url = upload_report(report_path, run_id)
    link(
        url,
        f"validation report ({spec.name})",
        f"validation-{spec.name}",
        "Great Expectations results" + ("" if report.success else " - FAILED"),
    )
    if not report.success:
        lines = report.lines()
        markdown(
            "## Validation failed\n\n" + "\n".join(f"- {md(ln)}" for ln in lines), f"validation-failures-{spec.name}"
        )
        refuse_failed(report, Path(export))
    get_run_logger().info("validated %s as '%s'", export, spec.name)
    return {"export": export, "dataset": spec.name, "report": url, "validation": validation_summary(report)}


@task
def masks_task(export: str, out: str) -> str:
    stats = render_masks(open_export(Path(export)), Path(out), workers=get_settings().mask_workers, progress=False)
    get_run_logger().info("masks: %d rendered, %d unchanged, %d removed", stats.rendered, stats.skipped, stats.removed)
    return out


@task(retries=2, retry_delay_seconds=exponential_backoff(5))
def snapshot_task(export: str, dataset: str, masks: str, validation: dict[str, Any]) -> dict[str, Any]:
    """Split the export and store it as a dataset snapshot (content-addressed; a rerun uploads nothing)."""
    s = get_settings()
    exp = open_export(Path(export))
    spec = resolve_dataset(exp, load_registry(s.datasets_file), dataset)
    record = snapshot_export(Path(export), spec, Path(masks), s, store_from_settings(s), validation)
    get_run_logger().info("snapshot %s (%d files uploaded): %s", record["ref"], record["uploaded_files"], record["uri"])
    return record
