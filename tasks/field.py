"""Field-prediction tasks: the champion on new photos (masks + summary in the store), the label queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from drywall_core import field
from drywall_core import label_queue as lq
from drywall_core.config import get_settings
from drywall_core.datasets import load_registry
from drywall_core.drift import IMAGE_EXTENSIONS
from drywall_core.markup import md
from drywall_core.model import load_model
from drywall_core.monitoring import record_field
from drywall_core.predict import for_inference
from drywall_core.storage import store_from_settings
from tasks.artifacts import artifact_key, markdown
from tasks.monitoring import record


@task
def predict_field_task(
    champion: dict[str, Any], images_dir: str, out: str, run: str, bucket: str | None = None
) -> dict[str, Any]:
    """Predict every prompt on the photos this version has not seen; store masks and the merged summary."""
    s = get_settings()
    store = store_from_settings(s)
    version = champion["version"]
    prompts = load_registry(s.datasets_file).canonical_prompts
    photos = field.field_images(Path(images_dir), IMAGE_EXTENSIONS)
    done = field.predicted_shas(field.read_summary(store, version), prompts)
    loaded = for_inference(load_model(champion["path"]), s.inference_precision)
    progress = create_progress_artifact(0.0, key=artifact_key("field-predictions-progress"))

    def on_batch(n: int, total: int) -> None:
        update_progress_artifact(progress, 100.0 * n / max(total, 1), description=f"{n}/{total} images")

    result = field.predict_field(
        loaded, photos, prompts, Path(out), version, run=run, done=done, progress=False, on_batch=on_batch
    )
    update_progress_artifact(progress, 100.0, description=f"{len(result.frame) // max(len(prompts), 1)} images")
    published = field.publish_predictions(store, version, result) if len(result.frame) else {"new_rows": 0}
    if len(result.frame):
        meta = {"model_version": version, "run": run, "images": result.frame["sha256"].nunique()}
        record("field predictions", lambda where, model, ps: record_field(where, model, ps, result.frame, meta))
    for item in result.skipped:
        get_run_logger().warning("%s: skipped (%s)", item["image"], item["reason"])
    _uncertain_table(store, version, result, _image_link(bucket, images_dir))
    get_run_logger().info(
        "field predictions: %d new images, %d predicted before, %d unreadable",
        result.frame["sha256"].nunique() if len(result.frame) else 0,
        result.already,
        len(result.skipped),
    )
    return {
        **published,
        "version": version,
        "prompts": prompts,
        "predicted": int(result.frame["sha256"].nunique()) if len(result.frame) else 0,
        "already": result.already,
        "skipped": result.skipped,
        "out": out,
        "rows": result.frame.to_dict("records"),
        "images": {p.sha256: str(p.path) for p in photos},
    }


def _image_link(bucket: str | None, images_dir: str) -> Any:
    """image name -> a link a browser opens: presigned from the field bucket, else the local path."""
    if not bucket:
        return lambda name: str(Path(images_dir) / name)
    from drywall_core.storage import S3Store, s3_client_from

    s = get_settings()
    photos = S3Store(bucket, "", s3_client_from(s))
    return photos.link


def _uncertain_table(store: Any, version: str, result: field.FieldRun, image_link: Any, k: int = 20) -> None:
    """The most uncertain image-prompt pairs of this run, with links to the photo and its stored mask."""
    top = field.most_uncertain(result.frame, k)
    rows = [
        {
            "image": image_link(r.image),
            "prompt": r.prompt,
            "uncertain share": round(r.uncertain_share, 4),
            "mean entropy": round(r.mean_entropy, 4),
            "foreground": round(r.fg_fraction, 4),
            "confidence": round(r.mean_confidence, 4),
            "mask": store.link(field.predictions_key(version, r.mask)),
        }
        for r in top.itertuples()
    ]
    create_table_artifact(
        rows, key=artifact_key("field-most-uncertain"), description=f"most uncertain field images ({version})"
    )


def _challenger(champion: str, dest: Path) -> Any:
    """The newest version published after the champion (a refused candidate), loaded; None without one."""
    from tasks.registry import registry

    reg = registry()
    newer = [v for v in reg.versions() if v > champion]
    if not newer:
        return None
    get_run_logger().info("label queue: ties broken by disagreement with challenger %s", newer[-1])
    return for_inference(load_model(reg.download(newer[-1], dest)), get_settings().inference_precision)


@task
def label_queue_task(predicted: dict[str, Any], batch: str | None = None) -> dict[str, Any]:
    """Queue each dataset's most uncertain new photos in its Roboflow project (per-run, per-day limits)."""
    import pandas as pd

    s = get_settings()
    logger = get_run_logger()
    key = s.roboflow_key()
    frame = pd.DataFrame(predicted["rows"], columns=field.COLUMNS)
    why = None
    if s.label_queue.per_run == 0:
        why = "DRYWALL_LABEL_QUEUE__PER_RUN is 0"
    elif not key:
        why = "no Roboflow API key (DRYWALL_ROBOFLOW_API_KEY)"
    elif frame.empty:
        why = "no new field images"
    if why:
        markdown(f"Label queue skipped: {md(why)}.", "label-queue", "images sent for labelling")
        logger.info("label queue skipped: %s", why)
        return {"skipped": why, "projects": {}}
    store = store_from_settings(s)
    images = {sha: Path(p) for sha, p in predicted["images"].items()}
    batch = batch or lq.default_batch()
    out: dict[str, Any] = {}
    lines = ["| project | prompt | queued | before | over limit | failed |", "|---|---|---|---|---|---|"]
    challenger = _challenger(predicted["version"], Path(predicted["out"]).parent / "challenger")
    for spec in load_registry(s.datasets_file).datasets.values():
        if spec.roboflow is None or spec.prompt not in set(frame["prompt"]):
            continue
        ws, proj = spec.roboflow.workspace, spec.roboflow.project
        masks = Path(predicted["out"])
        items, _ = lq.select(store, frame, images, masks, ws, proj, spec.prompt, s.label_queue.per_run, challenger)
        client = lq.RoboflowProjectClient(ws, proj, key, s.roboflow_api_url)
        report = lq.queue_for_labelling(
            store,
            client,
            items,
            ws,
            proj,
            spec.class_name,
            batch,
            s.label_queue.per_day,
            retries=s.pull_retries,
            backoff_s=s.pull_backoff_s,
        )
        for name, reason in report.failed:
            logger.warning("label queue %s/%s: %s not queued (%s)", ws, proj, name, reason)
        out[f"{ws}/{proj}"] = {
            "queued": [e["image"] for e in report.queued],
            "already": report.already,
            "over_limit": report.over_limit,
            "failed": report.failed,
        }
        lines.append(
            f"| {md(ws)}/{md(proj)} | {md(spec.prompt)} | {len(report.queued)} | {len(report.already)} | "
            f"{len(report.over_limit)} | {len(report.failed)} |"
        )
    markdown("\n".join(lines) + f"\n\nbatch {md(batch)}", "label-queue", "images sent for labelling")
    return {"batch": batch, "projects": out}
