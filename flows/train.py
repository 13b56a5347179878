"""Train: activation cache -> decoder fine-tuning -> held-out evaluation -> artifact.

The GPU stage: deployed on the ``gpu`` work pool and started by ``retrain`` with
``run_deployment``; run locally, ``retrain`` calls it inline as a subflow.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.fanout import activation_cache_flow, run_fanout, use_dask
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
    if use_dask():  # encode on the Dask cluster, one chunk of images per task
        run_fanout(activation_cache_flow, exports=exports, base_model=base_model, datasets=datasets)
    else:
        activation_cache_task(exports, base_model, datasets)
    return train_task(exports, base_model, out, datasets, overrides, resume)
