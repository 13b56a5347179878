"""Evaluate the current champion on the latest validated data and flag regressions.

Publishes the metrics to the artifact store beside the model, and emits a
``drywall.model.regressed`` event when a prompt falls more than the gate's tolerance below the
metrics recorded when the champion was promoted (:func:`drywall_core.stages.release.evaluate_champion`,
which ``drywall registry evaluate`` runs too).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.common import Source, run_dir
from flows.ingest import ingest
from tasks.release import evaluate_champion_task


@flow(name="evaluate-champion", log_prints=True)
def evaluate_champion(sources: list[Source] | None = None) -> dict[str, Any]:
    snapshots = [r["ref"] for r in ingest(sources)]
    result = evaluate_champion_task(snapshots, str(run_dir("evaluate")), str(flow_run.get_id() or "local"))
    if result["version"] is None:
        return {"status": "no champion"}
    return {
        "version": result["version"],
        "regressions": result["regressions"],
        "metrics": result["reports"].get("metrics"),
        "event_id": result["event_id"],
    }
