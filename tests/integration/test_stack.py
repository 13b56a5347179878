"""`drywall stack up|status|down` on loopback: every part answers (with credentials, and nothing without
them but what docs/OPERATIONS.md lists), the schedules have upcoming runs, a deployment runs through a
worker, down cleans up."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from deployments.s3server import free_port_pair
from deployments.stack import COMPONENTS, port_open
from drywall_core.base.procs import pid_alive
from tests.conftest import REPO
from tests.integration.exposure import exposures, service_table
from tests.integration.prefect_server import free_port

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = shlex.split(value)[0]
    return out


def test_stack_up_run_down(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ports = {
        "DRYWALL_STACK_PREFECT_PORT": free_port(),
        "DRYWALL_STACK_S3_PORT": free_port_pair(),
        "DRYWALL_WEBHOOK_PORT": free_port(),
        "DRYWALL_STACK_EVIDENTLY_PORT": free_port(),
        "DRYWALL_STACK_POSTGRES_PORT": free_port(),
        "DRYWALL_SERVE__PORT": free_port(),
    }
    env = {**os.environ, "DRYWALL_HOME": str(home), **{k: str(v) for k, v in ports.items()}}
    # the scheduler's full pass once an hour: deleted runs stay deleted; a fresh deploy is still
    # scheduled at once (its recent-deployments pass runs every 5 s)
    env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = "3600"
    env.pop("PREFECT_API_URL", None)

    def drywall(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "drywall"), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout
        )

    up = drywall("stack", "up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "[1/7] PostgreSQL ..." in up.stderr and "schedules produce upcoming runs: up" in up.stderr, up.stderr
        stack_dir = home / "stack"
        stack_env = _env_file(stack_dir / "stack.env")
        assert set(stack_env) >= {
            "PREFECT_API_URL",
            "PREFECT_API_AUTH_STRING",
            "DRYWALL_S3_ENDPOINT_URL",
            "DRYWALL_S3_BUCKET",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "DRYWALL_WEBHOOK_URL",
            "DRYWALL_WEBHOOK_SECRET",
            "DRYWALL_EVIDENTLY_URL",
            "DRYWALL_EVIDENTLY_SECRET",
            "DRYWALL_SERVE_URL",
            "DRYWALL_API_KEY",
        }
        for secret_file in ("stack.env", "stack.json"):
            assert (stack_dir / secret_file).stat().st_mode & 0o777 == 0o600, secret_file
        assert stack_dir.stat().st_mode & 0o777 == 0o700
        pids = {c: int((stack_dir / f"{c}.pid").read_text()) for c in COMPONENTS}

        # every part answers, and the scheduler has made the cron deployments' upcoming runs
        status = drywall("stack", "status")
        assert status.returncode == 0, status.stdout + status.stderr
        for deployment in ("retrain/retrain-nightly", "evaluate-champion/evaluate-nightly", "drift/drift-daily"):
            assert f"schedule {deployment}" in status.stdout and "NO RUN" not in status.stdout, status.stdout
        api = stack_env["PREFECT_API_URL"]
        user, _, password = stack_env["PREFECT_API_AUTH_STRING"].partition(":")
        auth = (user, password)
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200
        assert httpx.get(api.removesuffix("/api"), timeout=10).status_code == 200, "the UI is served"
        assert httpx.post(f"{api}/deployments/filter", json={}, timeout=10).status_code == 401, "no auth, no API"
        assert httpx.post(f"{api}/deployments/filter", json={}, auth=(user, "wrong"), timeout=10).status_code == 401
        assert len(httpx.post(f"{api}/deployments/filter", json={}, auth=auth, timeout=10).json()) == 6
        assert httpx.get(f"{stack_env['DRYWALL_WEBHOOK_URL']}/healthz", timeout=10).json()["status"] == "ok"
        serve = stack_env["DRYWALL_SERVE_URL"]
        assert httpx.get(f"{serve}/healthz", timeout=10).json() == {"status": "alive"}
        assert httpx.get(f"{serve}/v1/models", timeout=10).status_code == 401, "no key, no predictions"
        models = httpx.get(f"{serve}/v1/models", headers={"Authorization": f"Bearer {stack_env['DRYWALL_API_KEY']}"})
        assert models.status_code == 200 and models.json()["following"].startswith("champion of s3://"), models.text
        assert httpx.get(f"{serve}/readyz", timeout=10).status_code == 503, "no champion yet: not ready"
        assert stack_env["DRYWALL_API_KEY"] not in (stack_dir / "api-keys.txt").read_text(), "stored hashed"
        evidently = f"{stack_env['DRYWALL_EVIDENTLY_URL']}/api/projects"
        assert httpx.get(evidently, timeout=10).status_code == 401
        secret = {"evidently-secret": stack_env["DRYWALL_EVIDENTLY_SECRET"]}
        assert httpx.get(evidently, headers=secret, timeout=10).status_code == 200
        from drywall_core.base.storage import s3_client

        s3 = s3_client(
            stack_env["DRYWALL_S3_ENDPOINT_URL"],
            "us-east-1",
            stack_env["AWS_ACCESS_KEY_ID"],
            stack_env["AWS_SECRET_ACCESS_KEY"],
        )
        s3.head_bucket(Bucket=stack_env["DRYWALL_S3_BUCKET"])
        for pool in ("cpu", "gpu"):
            workers = httpx.post(f"{api}/work_pools/{pool}/workers/filter", json={}, auth=auth, timeout=10).json()
            assert any(w["status"] == "ONLINE" for w in workers), pool

        # nothing answers without credentials but what the operator guide's table says
        allowed = service_table(REPO / "docs" / "OPERATIONS.md")
        assert set(COMPONENTS) <= set(allowed), "every component has a row"
        seen = []
        for component, pid in pids.items():
            for exposure in exposures([pid]):
                seen.append((component, exposure.port))
                extra = set(exposure.open) - allowed[component]
                assert not extra, f"{component} port {exposure.port} ({exposure.process}) answers {sorted(extra)}"
        assert {c for c, _ in seen} >= {"postgres", "prefect-server", "s3", "evidently", "webhook", "serve"}, seen
        assert len([p for c, p in seen if c == "s3"]) >= 8, "SeaweedFS's internal ports were probed too"

        # a schedule whose upcoming runs are gone (as when the scheduler fails) is named, exit 1
        drift = httpx.get(f"{api}/deployments/name/drift/drift-daily", auth=auth, timeout=10).json()
        upcoming = httpx.post(
            f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [drift["id"]]}}}, auth=auth, timeout=10
        ).json()
        for run in upcoming:
            assert httpx.delete(f"{api}/flow_runs/{run['id']}", auth=auth, timeout=10).status_code == 204
        broken = drywall("stack", "status")
        assert broken.returncode == 1, broken.stdout + broken.stderr
        assert "schedule drift/drift-daily: schedule 0 6 * * * is active but the scheduler has created no" in (
            broken.stderr
        ), broken.stderr

        # a deployment run completes through a worker
        penv = {**env, **stack_env, "PREFECT_HOME": str(stack_dir / "prefect")}
        run = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "ingest/ingest", "--watch", "--watch-timeout", "300"]
            + ["--params", '{"sources": [{"kind": "synthetic"}]}'],  # production defaults would pull Roboflow
            env=penv,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=360,
        )
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]

        # starting twice does not start a second copy
        again = drywall("stack", "up")
        assert again.returncode == 0 and "already running" in again.stdout
        assert {c: int((stack_dir / f"{c}.pid").read_text()) for c in COMPONENTS} == pids
    finally:
        down = drywall("stack", "down")
    assert down.returncode == 0, down.stderr
    assert not [c for c, pid in pids.items() if pid_alive(pid)], "down stops exactly what up started"
    assert not [p for p in ports.values() if port_open(p)], "and frees the ports"
    assert drywall("stack", "status").returncode == 1
