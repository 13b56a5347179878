"""Train: dataset snapshots -> activation cache -> decoder fine-tuning -> staged candidate.

The GPU stage: deployed on the ``gpu`` work pool and started by ``retrain`` with
``run_deployment`` (run locally, ``retrain`` calls it inline as a subflow). It takes snapshot
references and a staging id and returns the staging URI and metrics, never a path of its host,
so it runs on any worker that shares the artifact store. A retried run -- here, or after the
orchestrating flow restarts it on another worker -- resumes from the last checkpoint staged.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.common import run_dir
from flows.fanout import activation_cache_flow, run_fanout, use_dask
from tasks.model import train_task


@flow(name="train", log_prints=True, retries=1, retry_delay_seconds=10)
def train_flow(
    snapshots: list[str],
    base_model: str,
    train_config: dict[str, Any],
    staging: str | None = None,
) -> dict[str, Any]:
    """``snapshots``: ``<dataset>/<snapshot id>`` references; ``staging``: where the candidate goes
    (default: this flow run's id). ``train_config`` is the resolved recipe, recorded as given."""
    staging = staging or str(flow_run.get_id() or "local")
    if use_dask():  # encode on the Dask cluster, one chunk of images per task
        run_fanout(activation_cache_flow, snapshots=snapshots, base_model=base_model, train_config=train_config)
    return train_task(snapshots, base_model, train_config, staging, str(run_dir("train") / staging))
