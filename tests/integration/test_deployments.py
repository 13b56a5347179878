"""`prefect deploy` of deployments/prefect.yaml against a real `prefect server start`, run via a worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.prefect_server import PrefectServer

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = PrefectServer(tmp_path_factory.mktemp("prefect-server")).start()
    yield srv
    srv.stop()


def _run(cmd: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_deploy_all_and_run_through_a_worker(server, tmp_path: Path) -> None:
    env = {
        **server.env(),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "DRYWALL_REPO": str(REPO),
        "DRYWALL_HOME": str(tmp_path / "home"),
    }
    _run(["bash", "deployments/create-pools.sh"], env)
    _run(["bash", "deployments/create-pools.sh"], env)  # idempotent
    r = _run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env
    )
    for name in (
        "retrain/retrain-nightly",
        "train/train-gpu",
        "evaluate-champion/evaluate-nightly",
        "drift/drift-daily",
        "ingest/ingest",
    ):
        assert f"Deployment '{name}' successfully created" in r.stdout.replace("\n", " ").replace("│", "")

    inspect = _run([str(BIN / "prefect"), "deployment", "inspect", "retrain/retrain-nightly"], env).stdout
    assert "'cron': '0 2 * * *'" in inspect and "'collision_strategy': 'ENQUEUE'" in inspect
    assert "'work_pool_name': 'gpu'" in inspect
    automations = _run([str(BIN / "prefect"), "automation", "ls"], env).stdout
    assert automations.count("Run deployment") >= 3, automations

    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "cpu", "--limit", "1"],
        env=env,
        cwd=REPO,
        stdout=open(tmp_path / "worker.log", "w"),  # noqa: SIM115 - lives as long as the worker
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        run = _run(
            [str(BIN / "prefect"), "deployment", "run", "ingest/ingest", "--watch", "--watch-timeout", "300"],
            env,
            timeout=360,
        )
        assert "Completed" in run.stdout
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    exports = list((tmp_path / "home" / "data").rglob("_annotations.coco.json"))
    assert exports, "the worker ran the ingest flow with the deployment's default parameters"
