"""Model-plane tasks: the training stage (snapshots in, staged candidate out), evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from drywall_core.candidates import fetch_candidate, train_candidate
from drywall_core.config import TrainConfig, get_settings
from drywall_core.evaluate import evaluate, write_reports
from drywall_core.model import load_model
from drywall_core.snapshots import load_snapshots
from drywall_core.storage import store_from_settings
from tasks.artifacts import artifact_key


@task
def train_task(
    snapshots: list[str], base_model: str, train_config: dict[str, Any], staging: str, work: str
) -> dict[str, Any]:
    """Train the decoder on the snapshots and stage the candidate in the store; returns its record."""
    s = get_settings()
    cfg = TrainConfig.model_validate(train_config)
    logger = get_run_logger()
    progress = create_progress_artifact(
        0.0, key=artifact_key("training-progress"), description=f"decoder fine-tuning, {cfg.epochs} epochs max"
    )

    def on_epoch(row: dict) -> None:
        try:  # progress is best effort: an unreachable Prefect API must not stop the training
            update_progress_artifact(
                progress,
                100.0 * row["epoch"] / cfg.epochs,
                description=f"epoch {row['epoch']}: val mIoU {row['val_miou']:.3f}",
            )
        except Exception as exc:  # noqa: BLE001 - reported, and the next epoch tries again
            logger.warning("epoch %d: progress not recorded (%s)", row["epoch"], exc)
        logger.info("epoch %d: train loss %.4f, val mIoU %.4f", row["epoch"], row["train_loss"], row["val_miou"])

    candidate = train_candidate(
        store_from_settings(s),
        snapshots,
        load_model(base_model),
        cfg,
        staging,
        Path(work),
        s.home,
        s.cache_root,
        on_epoch_end=on_epoch,
    )
    update_progress_artifact(progress, 100.0, description=f"done: best epoch {candidate['summary']['best_epoch']}")
    cache = candidate["summary"]["cache"]
    logger.info(
        "candidate staged at %s (cache: %d encoded, %d downloaded)",
        candidate["uri"],
        cache["encoded"],
        cache["downloaded"],
    )
    return candidate


@task(retries=3, retry_delay_seconds=5)
def fetch_candidate_task(staging: str, dest: str) -> dict[str, Any]:
    """Download the staged candidate to this host, for the gate and the registry."""
    return fetch_candidate(store_from_settings(get_settings()), staging, Path(dest))


@task
def evaluate_task(model: str, snapshots: list[str], out: str) -> str:
    """Evaluate a model on the held-out (val) images of the snapshots; returns the metrics.json path."""
    s = get_settings()
    val, specs = load_snapshots(store_from_settings(s), snapshots, s.home, sides=("val",))
    loaded = load_model(model)
    metrics = evaluate(loaded, val, specs, progress=False)
    return str(write_reports(loaded, val, specs, metrics, Path(out))["metrics"])


def read_metrics(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


@task
def shadow_task(candidate: str, champion: dict[str, Any] | None, dest: str) -> dict[str, Any]:
    """Candidate and champion on the latest field photos (no labels): how much would field masks change?"""
    from drywall_core.datasets import load_registry
    from drywall_core.predict import for_inference
    from drywall_core.shadow import latest_field_images, shadow_compare

    s = get_settings()
    if champion is None:
        return {"note": "no champion: nothing to compare with"}
    if s.gate.shadow_images == 0:
        return {"note": "off (DRYWALL_GATE__SHADOW_IMAGES=0)"}
    images = latest_field_images(s, s.gate.shadow_images, Path(dest))
    if not images:
        where = f"s3://{s.s3_bucket}/{s.field_images_prefix}" if s.s3_bucket else str(s.field_images_dir)
        get_run_logger().info("shadow evaluation: no field images under %s", where)
        return {"note": f"no field images under {where}: skipped"}
    cand = for_inference(load_model(candidate), s.inference_precision)
    champ = for_inference(load_model(champion["path"]), s.inference_precision)
    prompts = load_registry(s.datasets_file).canonical_prompts
    result = shadow_compare(cand, champ, images, prompts, s.gate.strong_disagreement_iou)
    for prompt, row in result["prompts"].items():
        get_run_logger().info("shadow '%s': agreement %.3f on %d field images", prompt, row["agreement"], row["images"])
    return result
