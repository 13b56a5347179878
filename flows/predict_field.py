"""Field predictions: the champion on new site photos, every prompt; the uncertain ones go to labelling.

Masks and ``summary.parquet`` (foreground fraction, confidence, uncertainty per image and prompt)
land under ``predictions/<champion version>/`` in the artifact store; a table artifact lists the
most uncertain images with links. Then each dataset's most uncertain new photos are uploaded to
its Roboflow project with the predicted masks as pre-annotations (per-run and per-day limits in
settings; skipped, and said so, without a Roboflow key).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from drywall_core.base.errors import CheckFailed
from flows.common import field_keys, field_source, run_dir
from tasks.field import fetch_s3_images_task, label_queue_task, predict_field_task
from tasks.release import fetch_champion_task


@flow(name="predict-field", log_prints=True)
def predict_field(
    folder: str | None = None,
    bucket: str | None = None,
    keys: list[str] | str | None = None,
    prefix: str | None = None,
    label_queue: bool = True,
    batch: str | None = None,
) -> dict[str, Any]:
    """Field photos from ``folder``, or ``bucket`` (``keys``, else everything under ``prefix``); with
    neither, the configured bucket under ``DRYWALL_FIELD_IMAGES_PREFIX`` (as ``drift``)."""
    folder, bucket, prefix = field_source(folder, bucket, prefix)
    work = run_dir("predict-field")
    images = folder or fetch_s3_images_task(bucket, field_keys(keys), prefix, str(work / "images"))
    champion = fetch_champion_task(str(work / "champion"))
    if champion is None:
        raise CheckFailed("no champion model: nothing to predict field images with")
    run = str(flow_run.get_id() or "local")
    predicted = predict_field_task(champion, images, str(work / "predictions"), run, None if folder else bucket)
    queued = label_queue_task(predicted, batch) if label_queue else {"skipped": "label_queue=false", "projects": {}}
    get_run_logger().info(
        "predict-field: %d new images under %s", predicted["predicted"], predicted.get("uri", "(nothing new)")
    )
    return {
        "version": predicted["version"],
        "uri": predicted.get("uri"),
        "predicted": predicted["predicted"],
        "already": predicted["already"],
        "skipped": predicted["skipped"],
        "label_queue": queued,
    }
