"""`prefect deploy` of deployments/prefect.yaml against a real `prefect server start`, run via a worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.fakes.roboflow_api import FakeRoboflow, zip_export
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


API_KEY = "testKey-abc123"


def _registry_on(fake: FakeRoboflow, path: Path) -> Path:
    """The packaged dataset registry with the crack dataset published on the Roboflow stand-in."""
    registry = yaml.safe_load((REPO / "drywall_core" / "datasets.yaml").read_text())
    registry["datasets"] = {"cracks": registry["datasets"]["cracks"]}
    registry["datasets"]["cracks"]["roboflow"] = {"workspace": fake.workspace, "project": fake.project}
    path.write_text(yaml.safe_dump(registry))
    return path


def test_deploy_all_and_run_through_a_worker(server, sample_data: Path, tmp_path: Path) -> None:
    """Deployed with production defaults: `ingest` with no parameters pulls the latest version of
    every registered dataset (here, from the loopback Roboflow stand-in), and pulls it only once."""
    fake = FakeRoboflow("site-qa", "cracks-3ii36-johwn", 3, zip_export(sample_data / "cracks.v1i.coco"), API_KEY)
    fake.__enter__()
    env = {
        **server.env(),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "DRYWALL_REPO": str(REPO),
        "DRYWALL_HOME": str(tmp_path / "home"),
        "DRYWALL_ROBOFLOW_API_URL": fake.url,
        "DRYWALL_ROBOFLOW_API_KEY": API_KEY,
        "DRYWALL_DATASETS_FILE": str(_registry_on(fake, tmp_path / "datasets.yaml")),
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
    run_ingest = [str(BIN / "prefect"), "deployment", "run", "ingest/ingest", "--watch", "--watch-timeout", "300"]
    try:
        assert "Completed" in _run(run_ingest, env, timeout=360).stdout
        assert fake.downloads == 1
        assert "Completed" in _run(run_ingest, env, timeout=360).stdout
        assert fake.downloads == 1, "the same version is not pulled twice"
        fake.version = 4  # a new version is published on Roboflow
        assert "Completed" in _run(run_ingest, env, timeout=360).stdout
        assert fake.downloads == 2, "a new version is pulled"
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        fake.__exit__(None, None, None)
    lineage = list((tmp_path / "home" / "data").rglob("drywall_lineage.json"))
    assert sorted(json.loads(p.read_text())["version"] for p in lineage) == [3, 4], "the latest, from the registry"
    assert not list((tmp_path / "home" / "data").glob("synthetic*")), "no synthetic data by default"
