"""Registry tasks: fetch the champion, gate, publish (retried: network), promote (compare-and-swap)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.events import emit_event
from prefect.tasks import exponential_backoff

from drywall_core.config import get_settings
from drywall_core.gate import decide
from drywall_core.registry import ModelRegistry
from drywall_core.storage import store_from_settings
from tasks.model import read_metrics


def registry() -> ModelRegistry:
    s = get_settings()
    return ModelRegistry(store_from_settings(s), s.model_name)


@task(retries=3, retry_delay_seconds=exponential_backoff(2))
def fetch_champion_task(dest: str) -> dict[str, Any] | None:
    """Download the current champion (verified) and note the alias etag the gate saw."""
    reg = registry()
    current = reg.champion()
    if current is None:
        return None
    alias, etag = current
    path = reg.download(alias["version"], Path(dest))
    return {"version": alias["version"], "etag": etag, "path": str(path)}


@task
def gate_task(
    candidate_metrics: str,
    champion_metrics: str | None,
    shadow: dict[str, Any] | None = None,
    claimed_metrics: str | None = None,
) -> dict[str, Any]:
    """``candidate_metrics``: measured on this host; ``claimed_metrics``: what the training run staged."""
    decision = decide(
        read_metrics(candidate_metrics),
        read_metrics(champion_metrics) if champion_metrics else None,
        get_settings().gate,
        shadow,
        claimed=read_metrics(claimed_metrics) if claimed_metrics else None,
    )
    get_run_logger().info("gate: %s (%s)", "PROMOTE" if decision.promote else "REFUSE", "; ".join(decision.reasons))
    return decision.to_dict()


@task(retries=3, retry_delay_seconds=exponential_backoff(2))
def publish_task(artifact: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Upload the candidate as a new immutable version (every file verified)."""
    return registry().publish(Path(artifact), extra=extra)


@task
def promote_task(version: str, expected_etag: str | None, decision: dict[str, Any]) -> dict[str, Any]:
    """Move the champion alias if the gate said so; record every decision in the audit log.

    A refusal emits ``drywall.gate.refused`` (labelled ``drywall.regression: "true"`` when a prompt
    regressed against the champion), which the alert automations listen to.
    """
    reg = registry()
    outcome = reg.settle(version, expected_etag, decision)
    if not outcome["promoted"]:
        regression = any("regresses" in r or "shadow agreement" in r for r in decision["reasons"])
        emit_event(
            event="drywall.gate.refused",
            resource={
                "prefect.resource.id": f"drywall.model.{reg.name}",
                "drywall.regression": "true" if regression else "false",
            },
            payload={"version": version, "reasons": decision["reasons"], "champion": reg.champion_version()},
        )
    return outcome
