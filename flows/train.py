"""Train: activation cache -> decoder fine-tuning -> held-out evaluation -> artifact.

The GPU stage: deployed on the ``gpu`` work pool and started by ``retrain`` with
``run_deployment``; run locally, ``retrain`` calls it inline as a subflow.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.model import activation_cache_task, train_task


@flow(name="train", log_prints=True)
def train_flow(
    exports: list[str],
    base_model: str,
    out: str,
    datasets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    activation_cache_task(exports, base_model, datasets)
    return train_task(exports, base_model, out, datasets, overrides, resume)
