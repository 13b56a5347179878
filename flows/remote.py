"""Run a stage on another work pool and wait for it, through crashes and Prefect API outages.

``run_deployment(..., timeout=None)`` polls the API until the child run ends and raises on the
first connection error, so a Prefect server restarted for a minute crashed the nightly retrain
while its training run went on and staged a candidate nobody gated. And a child whose worker (or
host) died ends Crashed -- by the zombie-run automation, once its heartbeats stop -- which Prefect's
flow retries do not cover. Here the parent creates the child run, then polls its state itself,
waiting out an unreachable API for up to ``api_outage_tolerance_s``, and starts the deployment
again after a crash (``train_crash_retries``): the new run resumes from what the crashed one staged.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

POLL_S = 5.0


class RemoteRunFailed(RuntimeError):
    pass


def wait_for_final_state(run_id: UUID, outage_tolerance_s: float, poll_s: float = POLL_S) -> FlowRun:
    """Poll a flow run until it is final; an API that does not answer is waited out, up to a limit."""
    log = get_run_logger()
    down_since: float | None = None
    while True:
        try:
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(run_id)
        except (httpx.HTTPError, OSError) as exc:
            now = time.monotonic()
            down_since = down_since or now
            if now - down_since > outage_tolerance_s:
                raise RemoteRunFailed(
                    f"the Prefect API did not answer for {now - down_since:.0f}s while waiting for run {run_id}: {exc}"
                ) from None
            log.warning("Prefect API unreachable (%s); waiting for run %s", type(exc).__name__, run_id)
            time.sleep(poll_s)
            continue
        if down_since is not None:
            log.info(
                "Prefect API back after %.0fs; run %s is %s", time.monotonic() - down_since, run_id, run.state_name
            )
            down_since = None
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(poll_s)


def run_remote(deployment: str, parameters: dict[str, Any], crash_retries: int, outage_tolerance_s: float) -> FlowRun:
    """Run ``deployment`` to completion; a Crashed run is started again up to ``crash_retries`` times."""
    log = get_run_logger()
    for attempt in range(crash_retries + 1):
        created = run_deployment(deployment, parameters=parameters, timeout=0)
        log.info("%s: run %s (attempt %d of %d)", deployment, created.id, attempt + 1, crash_retries + 1)
        run = wait_for_final_state(created.id, outage_tolerance_s)
        state = run.state
        assert state is not None
        if state.is_completed():
            return run
        if state.is_crashed() and attempt < crash_retries:
            log.warning(
                "%s: run %s crashed (%s); starting it again on any worker of its pool, resuming from its checkpoint",
                deployment,
                run.id,
                state.message or "no message",
            )
            continue
        raise RemoteRunFailed(f"{deployment}: run {run.id} ended {state.name}: {state.message or ''}".strip())
    raise AssertionError("unreachable")
