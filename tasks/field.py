"""Field tasks: the champion on new photos (masks + summary in the store), the label queue, drift.

Each makes one stage call (:mod:`drywall_core.stages.field`); the stage reports to the UI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task
from prefect.tasks import exponential_backoff

from drywall_core.base.errors import CheckFailed, InputError
from drywall_core.base.fsutil import inside
from drywall_core.stages import field
from tasks.artifacts import link, upload_report
from tasks.context import flow_context


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
    from drywall_core.base.storage import S3Store, s3_client_from
    from drywall_core.field.drift import IMAGE_EXTENSIONS

    ctx = flow_context()
    store = S3Store(bucket, "", s3_client_from(ctx.settings))
    wanted = keys or [k for k in store.list(prefix or "") if Path(k).suffix.lower() in IMAGE_EXTENSIONS]
    # every key is checked before anything is fetched: a key that would land outside dest is refused
    targets = [(key, inside(Path(dest), key, f"S3 key of s3://{bucket}")) for key in wanted]
    for key, target in targets:
        store.get_file(key, target)
    ctx.reporter.info(f"fetched {len(wanted)} field images from s3://{bucket}")
    return dest


def _image_link(bucket: str | None) -> Any:
    """image name -> a link a browser opens: presigned from the field bucket (None: the local path)."""
    if not bucket:
        return None
    from drywall_core.base.storage import S3Store, s3_client_from

    return S3Store(bucket, "", s3_client_from(flow_context().settings)).link


@task
def predict_field_task(
    champion: dict[str, Any], images_dir: str, out: str, run: str, bucket: str | None = None
) -> dict[str, Any]:
    """Predict every prompt on the photos this version has not seen; store masks and the merged summary."""
    ctx = flow_context()
    outcome = field.predict_field(
        ctx, champion["version"], Path(champion["path"]), Path(images_dir), Path(out), run, _image_link(bucket)
    )
    return {
        **(outcome.published or {"new_rows": 0}),
        "version": outcome.version,
        "prompts": outcome.prompts,
        "predicted": outcome.predicted,
        "already": outcome.run.already,
        "skipped": outcome.run.skipped,
        "out": out,
        "rows": outcome.run.frame.to_dict("records"),
        "images": {sha: str(p) for sha, p in outcome.images.items()},
        "model_dir": str(champion["path"]),
    }


@task
def label_queue_task(predicted: dict[str, Any], batch: str | None = None) -> dict[str, Any]:
    """Queue each dataset's most uncertain new photos in its Roboflow project (per-run, per-day limits)."""
    import pandas as pd

    from drywall_core.field import predictions as fp

    run = fp.FieldRun(pd.DataFrame(predicted["rows"], columns=fp.COLUMNS), Path(predicted["out"]))
    photos = [fp.FieldImage(Path(p), Path(p).name, sha) for sha, p in predicted["images"].items()]
    model_dir = Path(predicted["model_dir"]) if predicted.get("model_dir") else None
    outcome = field.FieldOutcome(predicted["version"], predicted["prompts"], run, photos, model_dir=model_dir)
    return field.queue_field(flow_context(), outcome, batch).to_dict()


@task
def reference_profile_task(champion: dict[str, Any] | None) -> str:
    from drywall_core.field.drift import PROFILE_FILE

    if champion is None:
        raise CheckFailed("no champion model: nothing to compare field images with")
    path = Path(champion["path"]) / PROFILE_FILE
    if not path.is_file():
        raise CheckFailed(f"champion {champion['version']} has no {PROFILE_FILE}")
    return str(path)


@task
def drift_report_task(
    champion: dict[str, Any],
    reference_profile: str,
    current_dir: str,
    out: str,
    run_id: str,
    source: dict[str, Any],
    current_features: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The drift stage against the champion's reference profile, with the champion's model signals
    (``DRYWALL_DRIFT_MODEL_SIGNALS``); ``current_features``: when a fan-out stage computed them."""
    from drywall_core.field import drift as d

    ctx = flow_context()
    features = None
    if current_features:
        features = d.FeatureTable(d.load_profile(Path(current_features["features"])), current_features["skipped"])
    model = ctx.inference_model(champion["path"]) if ctx.settings.drift_model_signals else None
    payload = {"champion": champion["version"], "source": json.dumps(source), "run": run_id}
    outcome = field.drift(
        ctx, Path(reference_profile), Path(current_dir), Path(out), model,
        workspace=ctx.settings.monitoring_target, event_payload=payload, current_features=features,
    )  # fmt: skip
    link(upload_report(outcome.html_path, run_id), "Evidently drift report (HTML)", "drift-report")
    link(upload_report(outcome.json_path, run_id), "drift.json", "drift-json")
    return {**outcome.summary, "json": str(outcome.json_path), "html": str(outcome.html_path),
            "event_id": outcome.event_id}  # fmt: skip
