"""`drywall stack up|status|down` on loopback: every part answers, a deployment runs, down cleans up."""

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
from drywall_core.procs import pid_alive
from tests.conftest import REPO
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
    }
    env = {**os.environ, "DRYWALL_HOME": str(home), **{k: str(v) for k, v in ports.items()}}
    env.pop("PREFECT_API_URL", None)

    def drywall(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "drywall"), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=timeout
        )

    up = drywall("stack", "up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        stack_env = _env_file(home / "stack" / "stack.env")
        assert set(stack_env) >= {
            "PREFECT_API_URL",
            "DRYWALL_S3_ENDPOINT_URL",
            "DRYWALL_S3_BUCKET",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "DRYWALL_WEBHOOK_URL",
            "DRYWALL_WEBHOOK_SECRET",
            "DRYWALL_EVIDENTLY_URL",
        }
        pids = {c: int((home / "stack" / f"{c}.pid").read_text()) for c in COMPONENTS}

        # every part answers
        status = drywall("stack", "status")
        assert status.returncode == 0, status.stdout + status.stderr
        api = stack_env["PREFECT_API_URL"]
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200
        assert httpx.get(api.removesuffix("/api"), timeout=10).status_code == 200, "the UI is served"
        assert httpx.get(f"{stack_env['DRYWALL_WEBHOOK_URL']}/healthz", timeout=10).json()["status"] == "ok"
        assert httpx.get(f"{stack_env['DRYWALL_EVIDENTLY_URL']}/api/projects", timeout=10).status_code == 200
        from drywall_core.storage import s3_client

        s3 = s3_client(
            stack_env["DRYWALL_S3_ENDPOINT_URL"],
            "us-east-1",
            stack_env["AWS_ACCESS_KEY_ID"],
            stack_env["AWS_SECRET_ACCESS_KEY"],
        )
        s3.head_bucket(Bucket=stack_env["DRYWALL_S3_BUCKET"])
        for pool in ("cpu", "gpu"):
            workers = httpx.post(f"{api}/work_pools/{pool}/workers/filter", json={}, timeout=10).json()
            assert any(w["status"] == "ONLINE" for w in workers), pool

        # a deployment run completes through a worker
        penv = {**env, **stack_env, "PREFECT_HOME": str(home / "stack" / "prefect")}
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
        assert {c: int((home / "stack" / f"{c}.pid").read_text()) for c in COMPONENTS} == pids
    finally:
        down = drywall("stack", "down")
    assert down.returncode == 0, down.stderr
    assert not [c for c, pid in pids.items() if pid_alive(pid)], "down stops exactly what up started"
    assert not [p for p in ports.values() if port_open(p)], "and frees the ports"
    assert drywall("stack", "status").returncode == 1
