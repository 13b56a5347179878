"""Drift tasks: gather field images (folder or S3), features, Evidently report, event on drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.events import emit_event
from prefect.tasks import exponential_backoff

from drywall_core import drift as d
from drywall_core.config import get_settings
from drywall_core.errors import CheckFailed, InputError
from drywall_core.fsutil import inside
from drywall_core.markup import md
from drywall_core.monitoring import record_drift
from drywall_core.storage import S3Store, s3_client_from
from tasks.artifacts import link, markdown, upload_report
from tasks.monitoring import record


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry network trouble, never a refused name (it would be refused again)."""
    try:
        state.result()
    except InputError:
        return False
    except Exception:  # noqa: BLE001 - anything else may pass on a retry
        return True
    return True


@task(retries=3, retry_delay_seconds=exponential_backoff(2), retry_condition_fn=_transient)
def fetch_s3_images_task(bucket: str, keys: list[str] | None, prefix: str | None, dest: str) -> str:
    """Download the given objects (or every image under ``prefix``) from S3 into ``dest``."""
    s = get_settings()
    store = S3Store(bucket, "", s3_client_from(s))
    wanted = keys or [k for k in store.list(prefix or "") if Path(k).suffix.lower() in d.IMAGE_EXTENSIONS]
    # every key is checked before anything is fetched: a key that would land outside dest is refused
    targets = [(key, inside(Path(dest), key, f"S3 key of s3://{bucket}")) for key in wanted]
    for key, target in targets:
        store.get_file(key, target)
    get_run_logger().info("fetched %d field images from s3://%s", len(wanted), bucket)
    return dest


@task
def reference_profile_task(champion: dict[str, Any] | None) -> str:
    if champion is None:
        raise CheckFailed("no champion model: nothing to compare field images with")
    path = Path(champion["path"]) / d.PROFILE_FILE
    if not path.is_file():
        raise CheckFailed(f"champion {champion['version']} has no {d.PROFILE_FILE}")
    return str(path)


@task
def drift_report_task(
    reference_profile: str, current_dir: str, out: str, run_id: str, current_features: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``current_features`` (parquet path + skipped files) when a fan-out stage computed them already."""
    s = get_settings()
    if current_features:
        current = d.FeatureTable(d.load_profile(Path(current_features["features"])), current_features["skipped"])
    else:
        current = d.extract_features(d.find_images(Path(current_dir)), max_pixels=s.max_image_pixels, progress=False)
    result = d.run_drift(d.load_profile(Path(reference_profile)), current, Path(out), s.drift_share)
    record("drift run", lambda where, model, prompts: record_drift(where, model, prompts, result.snapshot))
    sm = result.summary
    link(upload_report(result.html_path, run_id), "Evidently drift report (HTML)", "drift-report")
    link(upload_report(result.json_path, run_id), "drift.json", "drift-json")
    rows = "\n".join(
        f"| {md(c)} | {md(v['method'])} | {v['score']:.4f} | {'yes' if c in sm['drifted_columns'] else ''} |"
        for c, v in sorted(sm["columns"].items())
    )
    verdict = "DRIFT DETECTED" if sm["drift_detected"] else "no drift"
    markdown(
        f"**{verdict}**: {sm['drifted_share']:.0%} of features drifted (threshold {sm['drift_share_threshold']:.0%});"
        f" {sm['n_reference']} reference vs {sm['n_current']} current images, {len(sm['skipped'])} skipped\n\n"
        f"| feature | test | score (p-value) | drifted |\n|---|---|---|---|\n{rows}",
        "drift-summary",
    )
    return {**sm, "json": str(result.json_path), "html": str(result.html_path)}


@task
def emit_drift_event_task(summary: dict[str, Any], version: str, source: dict[str, Any]) -> str | None:
    """``drywall.drift.detected``, which a deployment trigger turns into a retrain."""
    if not summary["drift_detected"]:
        return None
    event = emit_event(
        event="drywall.drift.detected",
        resource={"prefect.resource.id": "drywall.field-images"},
        payload={
            "drifted_share": summary["drifted_share"],
            "drifted_columns": summary["drifted_columns"],
            "n_current": summary["n_current"],
            "champion": version,
            "source": json.dumps(source),
        },
    )
    return str(event.id) if event else None
