"""Data-plane tasks: pull/copy/synthesise, validate, render masks, snapshot (each one stage call)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import task
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from drywall_core.data.sources import copy_local_export, generate_synthetic
from drywall_core.stages import data
from tasks.artifacts import link, upload_report
from tasks.context import flow_context


@task(retries=3, retry_delay_seconds=exponential_backoff(5), retry_jitter_factor=0.5)
def pull_task(workspace: str, project: str, version: int, out: str) -> str:
    """Roboflow download (kept when ``out`` already holds that version, complete); the SDK call
    retries itself, this retries the whole pull on top."""
    return str(data.pull(flow_context(), workspace, project, version, Path(out), reuse=True).out)


@task(retries=3, retry_delay_seconds=exponential_backoff(5), retry_jitter_factor=0.5)
def latest_versions_task() -> list[dict[str, Any]]:
    """The newest Roboflow version of every dataset in the registry that names its Roboflow project."""
    return [asdict(v) for v in data.latest_versions(flow_context())]


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
    ctx = flow_context()
    spec = data.dataset_of(ctx, Path(export), dataset)
    validated = data.validate(ctx, Path(export), spec.name, Path(report_dir) / f"{spec.name}-validation.json")
    report_path = validated.report_path
    url = upload_report(report_path, str(TaskRunContext.get().task_run.flow_run_id))
    suffix = "" if validated.success else " - FAILED"
    link(url, f"validation report ({validated.spec.name})", f"validation-{validated.spec.name}",
         "Great Expectations results" + suffix)  # fmt: skip
    data.refuse(validated)
    return {"export": export, "dataset": validated.spec.name, "report": url, "validation": validated.summary()}


@task
def masks_task(export: str, out: str) -> str:
    return str(data.render(flow_context(), Path(export), Path(out)))


@task(retries=2, retry_delay_seconds=exponential_backoff(5))
def snapshot_task(export: str, dataset: str, masks: str, validation: dict[str, Any]) -> dict[str, Any]:
    """Split the export and store it as a dataset snapshot (content-addressed; a rerun uploads nothing)."""
    return data.snapshot(flow_context(), Path(export), dataset, Path(masks), validation)
