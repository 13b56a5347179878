"""Drift: new field images (a folder or an S3 bucket/prefix) against the champion's reference profile.

Evidently ``DataDriftPreset`` report (HTML + JSON) stored in the artifact store and linked in the
UI, a summary table, and a ``drywall.drift.detected`` event when the images drifted. The champion's
foreground fraction and confidence per prompt are features too (``DRYWALL_DRIFT_MODEL_SIGNALS``), as
with ``drywall drift --model`` (:func:`drywall_core.stages.field.drift`).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.common import field_keys, field_source, run_dir
from flows.fanout import drift_features_flow, run_fanout, use_dask
from tasks.field import drift_report_task, fetch_s3_images_task, reference_profile_task
from tasks.release import fetch_champion_task


@flow(name="drift", log_prints=True)
def drift(
    folder: str | None = None,
    bucket: str | None = None,
    keys: list[str] | str | None = None,
    prefix: str | None = None,
) -> dict[str, Any]:
    """Field images from ``folder``, or from ``bucket`` (``keys``, else everything under ``prefix``).

    With neither, the configured S3 bucket (``DRYWALL_S3_BUCKET``) under ``prefix``
    (``DRYWALL_FIELD_IMAGES_PREFIX``, ``field-images/``) is used, or else the folder
    ``$DRYWALL_HOME/field-images``.
    """
    folder, bucket, prefix = field_source(folder, bucket, prefix)
    keys = field_keys(keys)
    work = run_dir("drift")
    current = folder or fetch_s3_images_task(bucket, keys, prefix, str(work / "images"))
    champion = fetch_champion_task(str(work / "champion"))
    profile = reference_profile_task(champion)
    run_id = str(flow_run.get_id() or "local")
    features = None
    if use_dask():  # fan the feature extraction out over the Dask cluster
        features = run_fanout(drift_features_flow, folder=current, out=str(work / "current_features.parquet"))
    source = {"folder": folder, "bucket": bucket, "keys": keys, "prefix": prefix}
    summary = drift_report_task(champion, profile, current, str(work / "report"), run_id, source, features)
    event_id = summary.pop("event_id")
    get_run_logger().info(
        "drift %s (%.0f%% of features)",
        "DETECTED" if summary["drift_detected"] else "not detected",
        100 * summary["drifted_share"],
    )
    return {**summary, "event_id": event_id, "champion": champion["version"]}
