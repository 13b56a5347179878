"""Release tasks: the champion's verified copy, judge-and-publish, the champion's evaluation.

Each reads its parameters, makes one stage call (:mod:`drywall_core.stages.release`) and returns the
record; the stage reports to the UI through the context. Retries stay at the I/O boundaries (the
store's client), so no task here repeats a publish.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import task
from prefect.tasks import exponential_backoff

from drywall_core.data.snapshots import load_snapshots
from drywall_core.stages import release
from tasks.context import flow_context


@task(retries=3, retry_delay_seconds=exponential_backoff(2))
def fetch_champion_task(dest: str) -> dict[str, Any] | None:
    """Download the current champion (verified) and note the alias etag the gate saw."""
    champion = release.fetch_champion(flow_context(), Path(dest))
    return (
        None if champion is None else {"version": champion.version, "etag": champion.etag, "path": str(champion.path)}
    )


@task
def judge_and_publish_task(
    candidate: str, snapshots: list[str], work: str, claimed_metrics: str | None, extra: dict[str, Any]
) -> dict[str, Any]:
    """Measure candidate and champion on the snapshots' held-out images, shadow, gate, publish, settle."""
    import json

    ctx = flow_context()
    val, specs = load_snapshots(ctx.store, snapshots, ctx.settings.home, sides=("val",))
    claimed = json.loads(Path(claimed_metrics).read_text()) if claimed_metrics else None
    published = release.judge_and_publish(ctx, Path(candidate), val, specs, Path(work), claimed, extra)
    return asdict(published)


@task
def evaluate_champion_task(snapshots: list[str], work: str, run: str) -> dict[str, Any]:
    """The champion on the snapshots' held-out images, regressions flagged (and emitted)."""
    ctx = flow_context()
    val, specs = load_snapshots(ctx.store, snapshots, ctx.settings.home, sides=("val",))
    return release.evaluate_champion(ctx, val, specs, Path(work), run).to_dict()
