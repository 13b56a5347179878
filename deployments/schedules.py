"""Do the deployed schedules produce runs? Checked on the Prefect API, for `drywall stack status` and tests.

A schedule that is switched on but never produces a run is the failure that matters most here (the
nightly retrain silently stops): Prefect's scheduler service creates the upcoming runs of every
active schedule, and when it cannot (a broken database driver, a locked SQLite file) the UI still
shows the toggle on. So the check asks the API for what the scheduler made: every deployment with an
active schedule must have at least one SCHEDULED run in the future. Plain HTTP (no Prefect import),
with the API's basic-auth string when one is set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx

from drywall_core.stages.context import auth_headers


@dataclass(frozen=True)
class ScheduleCheck:
    deployment: str  # "<flow name>/<deployment name>"
    crons: tuple[str, ...]
    upcoming: int  # SCHEDULED runs with an expected start in the future
    next_start: str | None

    @property
    def ok(self) -> bool:
        return self.upcoming > 0

    @property
    def reason(self) -> str:
        if self.ok:
            return f"{self.upcoming} upcoming runs, next at {self.next_start}"
        return (
            f"schedule {', '.join(self.crons)} is active but the scheduler has created no upcoming run "
            "(see the Prefect server's log for scheduler errors)"
        )


def _post(client: httpx.Client, path: str, body: dict) -> list[dict]:
    r = client.post(path, json=body)
    r.raise_for_status()
    return r.json()


def check_schedules(api_url: str, auth_string: str | None = None, timeout: float = 10.0) -> list[ScheduleCheck]:
    """One check per deployment with an active schedule (paused deployments are not expected to run)."""
    now = datetime.now(UTC).isoformat()
    with httpx.Client(base_url=api_url.rstrip("/") + "/", headers=auth_headers(auth_string), timeout=timeout) as c:
        deployments = _post(c, "deployments/filter", {"limit": 200})
        flows = {f["id"]: f["name"] for f in _post(c, "flows/filter", {"limit": 200})}
        checks = []
        for d in deployments:
            crons = tuple(
                s["schedule"].get("cron") or str(s["schedule"]) for s in d.get("schedules") or [] if s.get("active")
            )
            if not crons or d.get("paused"):
                continue
            runs = _post(
                c,
                "flow_runs/filter",
                {
                    "deployments": {"id": {"any_": [d["id"]]}},
                    "flow_runs": {
                        "state": {"type": {"any_": ["SCHEDULED"]}},
                        "expected_start_time": {"after_": now},
                    },
                    "sort": "EXPECTED_START_TIME_ASC",
                    "limit": 50,
                },
            )
            checks.append(
                ScheduleCheck(
                    deployment=f"{flows.get(d['flow_id'], d['flow_id'])}/{d['name']}",
                    crons=crons,
                    upcoming=len(runs),
                    next_start=runs[0]["expected_start_time"] if runs else None,
                )
            )
    return sorted(checks, key=lambda c: c.deployment)


def wait_for_schedules(
    api_url: str, auth_string: str | None = None, timeout: float = 90.0, expect: int = 1
) -> list[ScheduleCheck]:
    """Poll until every active schedule (at least ``expect`` of them) has upcoming runs, or time runs out.

    Right after a deploy the scheduler needs a few seconds (its recent-deployments loop runs every
    5 s); the last checks are returned either way, so the caller names what is missing.
    """
    deadline = time.monotonic() + timeout
    while True:
        checks = check_schedules(api_url, auth_string)
        if len(checks) >= expect and all(c.ok for c in checks):
            return checks
        if time.monotonic() >= deadline:
            return checks
        time.sleep(2)


SCHEDULER_ERROR_MARKERS = (
    "schedule_deployments",
    "Can't evaluate bulk DML statement",
    "database is locked",
    "sqlalchemy.exc.",
)


def scheduler_errors(server_log: str) -> list[str]:
    """The lines of a Prefect server log that show its scheduler (or its database) failing."""
    return [
        line.strip()
        for line in server_log.splitlines()
        if any(m in line for m in SCHEDULER_ERROR_MARKERS) and ("ERROR" in line or "Error" in line or "exc." in line)
    ]
