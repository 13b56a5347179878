"""The production topology, as deployed: two hosts that share only the Prefect API and S3.

A real ``prefect server start`` on PostgreSQL, a real S3 server (SeaweedFS), the Roboflow API
stand-in, and two process workers -- ``cpu`` and ``gpu`` -- each in its own mount namespace with
its own ``DRYWALL_HOME``, ``PREFECT_HOME`` and working folder, the other host's folder hidden
under an empty tmpfs. The API demands basic auth, as in the stack and compose. The first
``retrain-nightly`` is the scheduler's own run: its cron is moved to the coming minute and the
scheduler, not the test, creates the run a worker then executes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest
import yaml

from deployments.postgres import PostgresServer, postgres_bin
from deployments.schedules import check_schedules, scheduler_errors, wait_for_schedules
from tests.conftest import REPO
from tests.fakes.roboflow_api import FakeRoboflow, zip_export
from tests.integration.alert_sink import Sink
from tests.integration.prefect_server import PrefectServer

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
API_KEY = "testKey-abc123"
AUTH = "drywall:prod-path-Secret-1"
CRON_DEPLOYMENTS = ["drift/drift-daily", "evaluate-champion/evaluate-nightly", "retrain/retrain-nightly"]
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
    home = tmp_path_factory.mktemp("prefect-pg")
    srv = PrefectServer(home, auth_string=AUTH, database_url=postgres.url).start(timeout=180)
    yield srv
    srv.stop()


def _host(root: Path, name: str) -> dict[str, Path]:
    host = {"root": root / name, "home": root / name / "home", "work": root / name / "work"}
    for p in host.values():
        p.mkdir(parents=True, exist_ok=True)
    return host


def _worker(
    pool: str, host: dict[str, Path], hidden: Path | list[Path], env: dict[str, str], log: Path
) -> subprocess.Popen:
    """A process worker in its own mount namespace: the other hosts' folders are empty tmpfs mounts."""
    host_env = {
        **env,
        "DRYWALL_HOME": str(host["home"]),
        "PREFECT_HOME": str(host["root"] / "prefect"),
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",  # as the stack, compose and the k8s template set them
        "PREFECT_CLIENT_MAX_RETRIES": "7",
    }
    hide = " && ".join(f'mount -t tmpfs none "{p}"' for p in ([hidden] if isinstance(hidden, Path) else hidden))
    script = hide + ' && cd "$1" && exec "$2" worker start --pool "$3" --limit 1'
    return subprocess.Popen(
        ["unshare", "-m", "bash", "-c", script, "_", str(host["work"]), str(BIN / "prefect"), pool],
        env=host_env,
        stdout=open(log, "w"),  # noqa: SIM115 - lives as long as the worker
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _api(api: str, method: str, path: str, body: dict | None = None) -> dict | list:
    user, _, password = AUTH.partition(":")
    r = httpx.request(method, f"{api}/{path}", json=body, auth=(user, password), timeout=30)
    r.raise_for_status()
    return r.json() if r.content else {}


def _flow_runs(api: str, flow_name: str) -> list[dict]:
    return _api(api, "POST", "flow_runs/filter", {"flows": {"name": {"any_": [flow_name]}}})


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _schedule_soon(api: str, deployment: str) -> str:
    """Move the deployment's cron to a minute shortly ahead and wait until the scheduler has made
    the run for it; returns that time. A scheduler pass that comes only after the minute (a loaded
    machine) makes tomorrow's run instead: then a minute further ahead is tried."""
    dep = _api(api, "GET", f"deployments/name/{deployment}")
    (schedule,) = dep["schedules"]
    for margin_s in (60, 120, 180):
        at = (datetime.now(UTC) + timedelta(seconds=margin_s + 59)).replace(second=0, microsecond=0)
        cron = f"{at.minute} {at.hour} * * *"
        patched = datetime.now(UTC)
        _api(api, "PATCH", f"deployments/{dep['id']}/schedules/{schedule['id']}", {"schedule": {"cron": cron}})
        while datetime.now(UTC) < at:
            runs = _api(api, "POST", "flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}}})
            fresh = [r for r in runs if r["auto_scheduled"] and _when(r["created"]) >= patched]
            made = [r["expected_start_time"][:16] for r in fresh]
            if at.isoformat()[:16] in made:
                return at.isoformat()
            if any(m > at.isoformat()[:16] for m in made):  # it skipped our minute: scheduled after it
                break
            time.sleep(2)
    raise AssertionError("the scheduler never made a run for the coming minute")


def _kill_host(worker: subprocess.Popen) -> None:
    """A host dies: its worker and every process under it (the flow run's), at once."""
    family = psutil.Process(worker.pid).children(recursive=True) + [psutil.Process(worker.pid)]
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    worker.wait(10)


def _start_run(api: str, deployment: str, parameters: dict) -> str:
    dep = _api(api, "GET", f"deployments/name/{deployment}")
    return _api(api, "POST", f"deployments/{dep['id']}/create_flow_run", {"parameters": parameters})["id"]


def _wait_final(api: str, run_id: str, timeout: float) -> dict:
    """A flow run once final; an API that is down meanwhile is waited out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            run = _api(api, "GET", f"flow_runs/{run_id}")
            if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
        time.sleep(2)
    raise AssertionError(f"flow run {run_id} not final after {timeout:.0f}s")


def _wait_for_key(store, key: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not store.exists(key):
        assert time.monotonic() < deadline, f"{key} never appeared in the store"
        time.sleep(0.3)


def _zombie_window(env: dict, seconds: int | None) -> None:
    """Set the zombie-run automation's window (None: the production default)."""
    arg = f"timedelta(seconds={seconds})" if seconds else ""
    script = f"from datetime import timedelta; from deployments.alerts import *; ensure_zombie_automation({arg})"
    _run([sys.executable, "-c", script], env)


def _wait_for_scheduled_run(api: str, deployment: str, timeout: float) -> dict:
    """The run the scheduler made for ``deployment``, once it is final."""
    dep = _api(api, "GET", f"deployments/name/{deployment}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _api(api, "POST", "flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}}})
        started = [r for r in runs if r["auto_scheduled"] and r["state_type"] != "SCHEDULED"]
        if started and all(r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in started):
            return started[0]
        time.sleep(3)
    raise AssertionError(f"the scheduler's run of {deployment} did not finish in {timeout:.0f}s: {runs}")


@pytest.mark.timeout(1500)  # about 7 minutes: a scheduled run, a killed host, a 60 s API outage, field photos
def test_nightly_retrain_across_a_cpu_and_a_gpu_host(
    server, s3_server, tiny_model_dir: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    from drywall_core.base.storage import S3Store
    from drywall_core.data.sources import generate_synthetic
    from drywall_core.release.registry import ModelRegistry

    v3 = zip_export(synthetic_root / "synthetic-cracks.v1i.coco")
    fake = FakeRoboflow("site-qa", "cracks-3ii36-johwn", 3, v3, API_KEY)
    fake.__enter__()
    shared = tmp_path / "shared"  # what every host has: the dataset registry file and the base model folder
    shared.mkdir()
    prefix = f"prod-{tmp_path.name}"
    sink = Sink()  # the operators' Slack channel
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
        "DRYWALL_ALERT_WEBHOOK_URL": sink.url,  # create-pools.sh sets up the alert automations
    }
    env.pop("DRYWALL_HOME", None)
    _run(["bash", "deployments/create-pools.sh"], env)
    _run(["bash", "deployments/create-pools.sh"], env)  # idempotent
    deployed = _run(
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env
    )
    for name in DEPLOYMENTS:
        assert f"Deployment '{name}' successfully created" in deployed.stdout.replace("\n", " ").replace("│", "")
    # the scheduler (on PostgreSQL) creates upcoming runs for every cron deployment, and logs no error
    checks = wait_for_schedules(server.api_url, AUTH, timeout=180, expect=len(CRON_DEPLOYMENTS))
    assert [c.deployment for c in checks] == CRON_DEPLOYMENTS and all(c.ok for c in checks), checks
    assert not scheduler_errors(server.log.read_text()), scheduler_errors(server.log.read_text())[:5]
    with pytest.raises(httpx.HTTPStatusError, match="401"):
        check_schedules(server.api_url, auth_string=None)  # the API refuses a client without the auth string
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
        # 1. the scheduler's run (no parameters): latest registered version pulled on the cpu host,
        #    trained on the gpu host
        due = _schedule_soon(api, "retrain/retrain-nightly")
        scheduled = _wait_for_scheduled_run(api, "retrain/retrain-nightly", timeout=620)
        assert scheduled["state_type"] == "COMPLETED", scheduled["state"]
        assert scheduled["expected_start_time"].startswith(due[:16]) and scheduled["parameters"] == {
            "train_deployment": "train/train-gpu"
        }
        assert fake.downloads == 1
        (trained,) = _flow_runs(api, "train")
        assert trained["work_pool_name"] == "gpu" and trained["state_type"] == "COMPLETED"
        first = reg.champion_version()
        assert first and reg.versions() == [first], "published and promoted"
        manifest = reg.show(first)
        (snap,) = manifest["trained_from"]["snapshots"].items()
        assert reg.store.exists(f"datasets/{snap[0]}/{snap[1]}/manifest.json"), "the snapshot is in S3"
        assert manifest["staging"].endswith(f"staging/{scheduled['id']}")
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

        # 3. the gpu host dies mid-training (SIGKILL of its worker and the run's process): the run is
        #    Crashed by the zombie automation (its heartbeats stop), retrain starts it again, another gpu
        #    host resumes from the staged checkpoint, and the weights equal the uninterrupted run's
        _zombie_window(env, 40)  # production: 180 s; the test's window is short but above one heartbeat
        forced = _start_run(api, "retrain/retrain-nightly", {"force": True})
        _wait_for_key(reg.store, f"staging/{forced}/checkpoint.pt", timeout=400)
        _kill_host(workers[1])
        killed_at = datetime.now(UTC)
        gpu2 = _host(tmp_path, "gpu2-host")
        workers.append(_worker("gpu", gpu2, [cpu["root"], gpu["root"]], env, tmp_path / "gpu2-worker.log"))
        done = _wait_final(api, forced, timeout=560)
        assert done["state_type"] == "COMPLETED", done["state"]
        attempts = sorted(_flow_runs(api, "train"), key=lambda r: r["created"])[1:]
        assert [r["state_type"] for r in attempts] == ["CRASHED", "COMPLETED"], [r["state"] for r in attempts]
        crash = attempts[0]["state"]
        assert "no heartbeat" in (crash["message"] or ""), crash
        detected = datetime.fromisoformat(crash["timestamp"].replace("Z", "+00:00")) - killed_at
        assert detected.total_seconds() < 40 + 60, f"Crashed {detected} after the kill (window 40 s)"
        crashed_name = attempts[0]["name"]
        deadline = time.monotonic() + 60
        while not [m for m in sink.messages if crashed_name in m.get("text", "")] and time.monotonic() < deadline:
            time.sleep(1)
        alerts = [m for m in sink.messages if crashed_name in m.get("text", "")]
        assert len(alerts) == 1 and "Crashed" in alerts[0]["text"], sink.messages
        staged = json.loads(reg.store.get_bytes(f"staging/{forced}/candidate.json"))
        assert staged["resumed"] is True, "the second attempt went on from the first one's checkpoint"
        versions = reg.versions()
        assert len(versions) == 2, "published once"
        weights = {v: reg.show(v)["files"]["decoder.safetensors"] for v in versions}
        assert weights[versions[1]] == weights[first], "resumed weights equal the uninterrupted run's"
        assert (gpu2["home"] / "blobs").is_dir(), "the new gpu host fetched what it needed from the store"

        # 4. Roboflow publishes a new version, and the Prefect server is down for 60 s while it trains:
        #    the nightly waits it out, ends Completed and publishes once
        _zombie_window(env, None)
        generate_synthetic(tmp_path / "v4", seed=4, n_sources=12)  # a seed whose sample validates
        fake.zip_bytes, fake.version = zip_export(tmp_path / "v4" / "synthetic-cracks.v1i.coco"), 4
        nightly_v4 = _start_run(api, "retrain/retrain-nightly", {})
        _wait_for_key(reg.store, f"staging/{nightly_v4}/checkpoint.pt", timeout=400)
        server.stop()
        time.sleep(60)
        server.start(timeout=180)
        done = _wait_final(api, nightly_v4, timeout=560)
        assert done["state_type"] == "COMPLETED", done["state"]
        assert fake.downloads == 2
        assert len(reg.versions()) == 3, "the new version's candidate was published (and gated), once"
        assert len(reg.store.list("datasets/cracks/")) > len(reg.store.list(f"datasets/cracks/{snap[1]}/"))

        # 5. field photos land in the bucket: predicted on the gpu host, the uncertain ones queued on Roboflow
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
            with contextlib.suppress(ProcessLookupError):  # the killed host is gone already
                os.killpg(w.pid, signal.SIGTERM)
        for w in workers:
            w.wait(30)
        fake.__exit__(None, None, None)
        sink.server.shutdown()
