"""The production topology, as deployed: two hosts that share only the Prefect API and S3.

A real ``prefect server start`` on PostgreSQL, a real S3 server (SeaweedFS), the Roboflow API
stand-in, and two process workers -- ``cpu`` and ``gpu`` -- each in its own mount namespace with
its own ``DRYWALL_HOME``, ``PREFECT_HOME`` and working folder, the other host's folder hidden
under an empty tmpfs. ``retrain-nightly`` is run with no parameters, as its schedule runs it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from tests.conftest import REPO
from tests.fakes.roboflow_api import FakeRoboflow, zip_export
from tests.integration.postgres_server import PostgresServer, postgres_bin
from tests.integration.prefect_server import PrefectServer

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
API_KEY = "testKey-abc123"
DEPLOYMENTS = (
    "retrain/retrain-nightly",
    "train/train-gpu",
    "evaluate-champion/evaluate-nightly",
    "drift/drift-daily",
    "predict-field/predict-field",
    "ingest/ingest",
)


def _run(cmd: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _registry_on(fake: FakeRoboflow, path: Path) -> Path:
    """The packaged dataset registry with the crack dataset published on the Roboflow stand-in."""
    registry = yaml.safe_load((REPO / "drywall_core" / "datasets.yaml").read_text())
    registry["datasets"] = {"cracks": registry["datasets"]["cracks"]}
    registry["datasets"]["cracks"]["roboflow"] = {"workspace": fake.workspace, "project": fake.project}
    path.write_text(yaml.safe_dump(registry))
    return path


@pytest.fixture(scope="module")
def postgres():
    if postgres_bin() is None:
        msg = "PostgreSQL (Debian's postgresql package) is not installed; make setup installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    pg = PostgresServer().start()
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory):
    os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = postgres.url
    try:
        srv = PrefectServer(tmp_path_factory.mktemp("prefect-pg")).start(timeout=180)
    finally:
        del os.environ["PREFECT_API_DATABASE_CONNECTION_URL"]
    yield srv
    srv.stop()


def _host(root: Path, name: str) -> dict[str, Path]:
    host = {"root": root / name, "home": root / name / "home", "work": root / name / "work"}
    for p in host.values():
        p.mkdir(parents=True, exist_ok=True)
    return host


def _worker(pool: str, host: dict[str, Path], hidden: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """A process worker in its own mount namespace: the other host's folder is an empty tmpfs."""
    host_env = {
        **env,
        "DRYWALL_HOME": str(host["home"]),
        "PREFECT_HOME": str(host["root"] / "prefect"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    script = 'mount -t tmpfs none "$1" && cd "$2" && exec "$3" worker start --pool "$4" --limit 1'
    return subprocess.Popen(
        ["unshare", "-m", "bash", "-c", script, "_", str(hidden), str(host["work"]), str(BIN / "prefect"), pool],
        env=host_env,
        stdout=open(log, "w"),  # noqa: SIM115 - lives as long as the worker
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _flow_runs(api: str, flow_name: str) -> list[dict]:
    r = httpx.post(f"{api}/flow_runs/filter", json={"flows": {"name": {"any_": [flow_name]}}}, timeout=30)
    r.raise_for_status()
    return r.json()


def test_nightly_retrain_across_a_cpu_and_a_gpu_host(
    server, s3_server, tiny_model_dir: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    from drywall_core.registry import ModelRegistry
    from drywall_core.sources import generate_synthetic
    from drywall_core.storage import S3Store

    v3 = zip_export(synthetic_root / "synthetic-cracks.v1i.coco")
    fake = FakeRoboflow("site-qa", "cracks-3ii36-johwn", 3, v3, API_KEY)
    fake.__enter__()
    shared = tmp_path / "shared"  # what every host has: the dataset registry file and the base model folder
    shared.mkdir()
    prefix = f"prod-{tmp_path.name}"
    env = {
        **server.env(),
        **s3_server.env(),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "DRYWALL_REPO": str(REPO),
        "DRYWALL_S3_PREFIX": prefix,
        "DRYWALL_ROBOFLOW_API_URL": fake.url,
        "DRYWALL_ROBOFLOW_API_KEY": API_KEY,
        "DRYWALL_DATASETS_FILE": str(_registry_on(fake, shared / "datasets.yaml")),
        "DRYWALL_BASE_MODEL": str(tiny_model_dir),
        "DRYWALL_TRAIN_PROFILE": "tiny-demo",  # the tiny model's recipe, by name: hosts' settings, not parameters
        "DRYWALL_MASK_WORKERS": "1",
    }
    env.pop("DRYWALL_HOME", None)
    _run(["bash", "deployments/create-pools.sh"], env)
    _run(["bash", "deployments/create-pools.sh"], env)  # idempotent
    deployed = _run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env
    )
    for name in DEPLOYMENTS:
        assert f"Deployment '{name}' successfully created" in deployed.stdout.replace("\n", " ").replace("│", "")
    inspect = _run([str(BIN / "prefect"), "deployment", "inspect", "retrain/retrain-nightly"], env).stdout
    assert "'cron': '0 2 * * *'" in inspect and "'collision_strategy': 'ENQUEUE'" in inspect
    assert "'work_pool_name': 'cpu'" in inspect and "'train_deployment': 'train/train-gpu'" in inspect
    automations = _run([str(BIN / "prefect"), "automation", "ls"], env).stdout
    assert automations.count("Run deployment") >= 3, automations
    assert "sources" not in inspect.split("'parameters'")[1].split("}")[0], "no data source by default"

    cpu, gpu = _host(tmp_path, "cpu-host"), _host(tmp_path, "gpu-host")
    workers = [
        _worker("cpu", cpu, gpu["root"], env, tmp_path / "cpu-worker.log"),
        _worker("gpu", gpu, cpu["root"], env, tmp_path / "gpu-worker.log"),
    ]
    nightly = [
        str(BIN / "prefect"),
        "deployment",
        "run",
        "retrain/retrain-nightly",
        "--watch",
        "--watch-timeout",
        "500",
    ]
    reg = ModelRegistry(S3Store(s3_server.bucket, prefix, s3_server.client()), "clipseg-drywall")
    api = server.api_url
    try:
        # 1. no parameters: latest registered version pulled on the cpu host, trained on the gpu host
        assert "Completed" in _run(nightly, env, timeout=560).stdout
        assert fake.downloads == 1
        (trained,) = _flow_runs(api, "train")
        assert trained["work_pool_name"] == "gpu" and trained["state_type"] == "COMPLETED"
        first = reg.champion_version()
        assert first and reg.versions() == [first], "published and promoted"
        manifest = reg.show(first)
        (snap,) = manifest["trained_from"]["snapshots"].items()
        assert reg.store.exists(f"datasets/{snap[0]}/{snap[1]}/manifest.json"), "the snapshot is in S3"
        assert manifest["staging"].endswith(f"staging/{_flow_runs(api, 'retrain')[0]['id']}")
        assert reg.store.list("cache/"), "the activation cache is shared through S3"

        gpu_cache = list((gpu["home"] / "cache" / "activations").glob("*/index.json"))
        assert gpu_cache, "the gpu host built the activation cache"
        assert not (cpu["home"] / "cache").exists(), "the cpu host never encoded an image"
        assert not (cpu["home"] / "runs" / "train").exists(), "the cpu host never trained"
        assert not (gpu["home"] / "data").exists(), "the gpu host never pulled: it fetched the snapshot"
        assert (cpu["home"] / "data").is_dir() and (gpu["home"] / "blobs").is_dir()

        # 2. nothing new on Roboflow: nothing trained, nothing published, run Completed
        assert "Completed" in _run(nightly, env, timeout=560).stdout
        assert len(_flow_runs(api, "train")) == 1 and reg.versions() == [first]
        assert fake.downloads == 1, "the cpu host already holds that version"

        # 3. Roboflow publishes a new version: it is pulled, and the next run trains again
        generate_synthetic(tmp_path / "v4", seed=4, n_sources=12)  # a seed whose sample validates
        fake.zip_bytes, fake.version = zip_export(tmp_path / "v4" / "synthetic-cracks.v1i.coco"), 4
        assert "Completed" in _run(nightly, env, timeout=560).stdout
        assert fake.downloads == 2 and len(_flow_runs(api, "train")) == 2
        assert len(reg.versions()) == 2, "the new version's candidate was published (and gated)"
        assert len(reg.store.list("datasets/cracks/")) > len(reg.store.list(f"datasets/cracks/{snap[1]}/"))

        # 4. field photos land in the bucket: predicted on the gpu host, the uncertain ones queued on Roboflow
        keys = []
        for i, photo in enumerate(sorted((tmp_path / "v4" / "synthetic-cracks.v1i.coco" / "valid").glob("*.jpg"))[:3]):
            keys.append(f"field-images/{tmp_path.name}/site-{i}.jpg")
            s3_server.client().upload_file(str(photo), s3_server.bucket, keys[-1])
        params = json.dumps({"bucket": s3_server.bucket, "keys": keys})
        field_run = [str(BIN / "prefect"), "deployment", "run", "predict-field/predict-field", "--params", params]
        assert "Completed" in _run([*field_run, "--watch", "--watch-timeout", "300"], env, timeout=330).stdout
        (predicted,) = _flow_runs(api, "predict-field")
        assert predicted["work_pool_name"] == "gpu"
        champion = reg.champion_version()
        summary = pd.read_parquet(io.BytesIO(reg.store.get_bytes(f"predictions/{champion}/summary.parquet")))
        assert sorted(summary["image"]) == sorted(keys) and set(summary["prompt"]) == {"segment crack"}
        assert all(reg.store.exists(f"predictions/{champion}/{m}") for m in summary["mask"])
        assert sorted(u["name"] for u in fake.uploads) == sorted(Path(k).name for k in keys)
        assert all(a["prediction"] for a in fake.annotations) and len(fake.annotations) == 3
    finally:
        for w in workers:
            os.killpg(w.pid, signal.SIGTERM)
        for w in workers:
            w.wait(30)
        fake.__exit__(None, None, None)
