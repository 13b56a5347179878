"""Model-plane tasks: activation cache, training, evaluation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext

from drywall_core.config import get_settings
from drywall_core.evaluate import evaluate, write_reports
from drywall_core.features import ActivationCache, cache_items
from drywall_core.model import base_fingerprint, load_model
from drywall_core.samples import collect_samples
from drywall_core.train import package_candidate, train
from tasks.artifacts import artifact_key


def _samples(exports: list[str], datasets: list[str] | None):
    return collect_samples([Path(e) for e in exports], get_settings(), datasets)


def _cache_key(_ctx: TaskRunContext, params: dict[str, Any]) -> str:
    """Model fingerprint + dtype + flip + the content of every image: a change anywhere rebuilds."""
    s = get_settings()
    h = hashlib.sha256(f"{base_fingerprint(params['base_model'])}|{s.train.cache_dtype}|{s.train.flip}".encode())
    samples, _ = _samples(params["exports"], params.get("datasets"))
    for sample in sorted(samples, key=lambda x: str(x.image)):
        h.update(hashlib.sha256(sample.image.read_bytes()).digest())
    return h.hexdigest()


@task(cache_key_fn=_cache_key, persist_result=True)
def activation_cache_task(exports: list[str], base_model: str, datasets: list[str] | None = None) -> dict[str, int]:
    """Encode every training/validation image (and mirrored view) once through the frozen backbone."""
    s = get_settings()
    samples, _ = _samples(exports, datasets)
    loaded = load_model(base_model)
    items = cache_items(samples, s.train.flip)
    stats = ActivationCache(s.cache_root, loaded, s.train.cache_dtype).build(
        items, s.train.cache_batch_size, progress=False
    )
    get_run_logger().info("activation cache: %(encoded)d encoded, %(cached)d already cached", stats)
    return stats


@task
def train_task(
    exports: list[str],
    base_model: str,
    out: str,
    datasets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train the decoder, evaluate it on held-out sources, write the artifact; returns paths and metrics."""
    s = get_settings()
    cfg = s.train.model_copy(update=overrides or {})
    samples, specs = _samples(exports, datasets)
    loaded = load_model(base_model)
    logger = get_run_logger()
    progress = create_progress_artifact(
        0.0, key=artifact_key("training-progress"), description=f"decoder fine-tuning, {cfg.epochs} epochs max"
    )

    def on_epoch(row: dict) -> None:
        update_progress_artifact(
            progress,
            100.0 * row["epoch"] / cfg.epochs,
            description=f"epoch {row['epoch']}: val mIoU {row['val_miou']:.3f}",
        )
        logger.info("epoch %d: train loss %.4f, val mIoU %.4f", row["epoch"], row["train_loss"], row["val_miou"])

    out_dir = Path(out)
    result = train(
        loaded, samples, specs, cfg, out_dir, s.cache_root, resume=resume, progress=False, on_epoch_end=on_epoch
    )
    update_progress_artifact(progress, 100.0, description=f"done: best epoch {result.best_epoch}")
    return package_candidate(loaded, samples, specs, result, out_dir, progress=False)


@task
def evaluate_task(model: str, exports: list[str], out: str, datasets: list[str] | None = None) -> str:
    """Evaluate a model on the held-out (val) sources of the exports; returns the metrics.json path."""
    samples, specs = _samples(exports, datasets)
    val = [x for x in samples if x.side == "val"]
    loaded = load_model(model)
    metrics = evaluate(loaded, val, specs, progress=False)
    return str(write_reports(loaded, val, specs, metrics, Path(out))["metrics"])


def read_metrics(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
