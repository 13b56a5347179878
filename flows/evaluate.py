"""Evaluate the current champion on the latest validated data and flag regressions.

Publishes the metrics to the artifact store beside the model, and emits a
``drywall.model.regressed`` event when a prompt falls more than the gate's tolerance below the
metrics recorded when the champion was promoted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.events import emit_event
from prefect.runtime import flow_run

from drywall_core.config import get_settings
from drywall_core.markup import md
from drywall_core.monitoring import record_evaluation
from drywall_core.registry import now
from flows.common import Source, run_dir
from flows.ingest import ingest
from tasks.artifacts import link, markdown
from tasks.model import evaluate_task, read_metrics
from tasks.monitoring import record
from tasks.registry import fetch_champion_task, registry


def regressions(current: dict[str, Any], recorded: dict[str, Any], tolerance: float) -> list[str]:
    out = []
    for d in current["datasets"].values():
        before = recorded.get(d["prompt"])
        if before and d["miou"] < before["miou"] - tolerance:
            out.append(f"'{d['prompt']}': mIoU {d['miou']:.3f} vs {before['miou']:.3f} when promoted")
    return out


@flow(name="evaluate-champion", log_prints=True)
def evaluate_champion(sources: list[Source] | None = None) -> dict[str, Any]:
    settings = get_settings()
    snapshots = [r["ref"] for r in ingest(sources)]
    work = run_dir("evaluate")
    champion = fetch_champion_task(str(work / "champion"))
    if champion is None:
        get_run_logger().warning("no champion to evaluate")
        return {"status": "no champion"}
    metrics_path = evaluate_task(champion["path"], snapshots, str(work / "eval"))
    metrics = read_metrics(metrics_path)
    recorded = json.loads((Path(champion["path"]) / "manifest.json").read_text()).get("metrics", {})
    flagged = regressions(metrics, recorded.get("per_prompt", {}), settings.gate.max_regression)

    reg = registry()
    key = f"{reg.root}/evaluations/{now().replace(':', '')}-{champion['version']}.json"
    reg.store.put_bytes(
        key,
        json.dumps(
            {**metrics, "regressions": flagged, "version": champion["version"], "flow_run_id": str(flow_run.get_id())},
            default=str,
        ).encode(),
    )
    link(reg.store.link(key), "champion evaluation", "champion-evaluation")
    meta = {"model_version": champion["version"], "run": str(flow_run.get_id())}
    record("champion evaluation", lambda where, model, ps: record_evaluation(where, model, ps, metrics, meta))
    rows = "\n".join(
        f"| {md(d['prompt'])} | {d['miou']:.3f} | "
        f"{recorded.get('per_prompt', {}).get(d['prompt'], {}).get('miou', float('nan')):.3f} |"
        for d in metrics["datasets"].values()
    )
    verdict = "REGRESSION: " + md("; ".join(flagged)) if flagged else "no regression"
    markdown(
        f"| prompt | mIoU now | mIoU at promotion |\n|---|---|---|\n{rows}\n\n**{verdict}**",
        "champion-evaluation-table",
        f"champion {champion['version']}",
    )
    event = None
    if flagged:
        event = emit_event(
            event="drywall.model.regressed",
            resource={"prefect.resource.id": f"drywall.model.{reg.name}"},
            payload={"version": champion["version"], "regressions": flagged},
        )
    return {
        "version": champion["version"],
        "regressions": flagged,
        "metrics": metrics_path,
        "event_id": str(event.id) if event else None,
    }
