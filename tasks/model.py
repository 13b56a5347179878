"""Model-plane tasks: the training stage (snapshots in, staged candidate out), fetching the candidate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from drywall_core.base.config import TrainConfig
from drywall_core.release.candidates import fetch_candidate
from drywall_core.stages.train import train_staged
from tasks.context import flow_context


@task
def train_task(
    snapshots: list[str], base_model: str, train_config: dict[str, Any], staging: str, work: str
) -> dict[str, Any]:
    """Train the decoder on the snapshots and stage the candidate in the store; returns its record."""
    cfg = TrainConfig.model_validate(train_config)
    return train_staged(flow_context(), snapshots, base_model, cfg, staging, Path(work))


@task(retries=3, retry_delay_seconds=5)
def fetch_candidate_task(staging: str, dest: str) -> dict[str, Any]:
    """Download the staged candidate to this host, for the gate and the registry."""
    return fetch_candidate(flow_context().store, staging, Path(dest))
