"""The webhook receiver over real HTTP (uvicorn) against a real Prefect server with the deployments,
and the alert automations that setup creates there, posting to a loopback Slack-compatible sink."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from deployments.schedules import scheduler_errors, wait_for_schedules
from drywall_core.data.webhooks import sign
from tests.conftest import REPO
from tests.integration.alert_sink import Sink
from tests.integration.prefect_server import PrefectServer, free_port, http_ok_within

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
SECRET = "whsec-test-7f3a9c"
API_AUTH_STRING = "drywall:webhook-stack-Secret-2"  # the Prefect API demands basic auth, as in the stack
API_AUTH = tuple(API_AUTH_STRING.split(":", 1))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Prefect server + pools + alerts + deployments (with their triggers) + the receiver on loopback."""
    tmp = tmp_path_factory.mktemp("webhook-stack")
    server = PrefectServer(tmp / "prefect", auth_string=API_AUTH_STRING).start()
    sink = Sink()
    env = {
        **server.env(),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "DRYWALL_REPO": str(REPO),
        "DRYWALL_HOME": str(tmp / "home"),
        "DRYWALL_WEBHOOK_SECRET": SECRET,
        "DRYWALL_S3_BUCKET": "field",  # the receiver takes field images of this bucket, under field-images/
        "DRYWALL_ALERT_WEBHOOK_URL": sink.url,
    }
    for cmd in (
        ["bash", "deployments/create-pools.sh"],
        ["bash", "deployments/create-pools.sh"],  # twice: the alerts are updated, not duplicated
        [str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
    ):
        r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    port = free_port()
    log = tmp / "receiver.log"
    proc = subprocess.Popen(
        [str(BIN / "drywall"), "webhook", "serve", "--port", str(port)],
        env=env,
        cwd=tmp,
        stdout=open(log, "w"),  # noqa: SIM115 - lives as long as the receiver
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    if not http_ok_within(f"{url}/healthz", 120):
        raise RuntimeError(log.read_text())
    yield {"url": url, "api": server.api_url, "log": log, "proc": proc, "sink": sink, "env": env, "server": server}
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(20)
    server.stop()
    sink.server.shutdown()


def post(
    url: str,
    path: str,
    body: bytes,
    delivery: str | None = None,
    secret: str = SECRET,
    ts: int | None = None,
    signature: str | None = None,
) -> httpx.Response:
    stamp = str(ts if ts is not None else int(time.time()))
    headers = {
        "X-Drywall-Timestamp": stamp,
        "X-Drywall-Delivery": delivery or str(uuid.uuid4()),
        "X-Drywall-Signature": signature or sign(secret, stamp, body),
        "Content-Type": "application/json",
    }
    return httpx.post(f"{url}{path}", content=body, headers=headers, timeout=60)


def events(api: str, name: str) -> list[dict]:
    """Every stored event of that name (the API pages by 50)."""
    r = httpx.post(
        f"{api}/events/filter", json={"filter": {"event": {"name": [name]}}, "limit": 50}, auth=API_AUTH, timeout=30
    )
    r.raise_for_status()
    page = r.json()
    out = list(page["events"])
    while page.get("next_page"):
        page = httpx.get(page["next_page"], auth=API_AUTH, timeout=30).json()
        out += page["events"]
    return [e for e in out if e["event"] == name]


def wait_for(fn, timeout: float = 30.0, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def flow_runs(api: str, deployment: str) -> list[dict]:
    """The deployment's runs that an event trigger made (the scheduler's upcoming runs left out)."""
    dep = httpx.get(f"{api}/deployments/name/{deployment}", auth=API_AUTH, timeout=30).json()
    body = {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}}
    r = httpx.post(f"{api}/flow_runs/filter", json=body, auth=API_AUTH, timeout=30)
    return [run for run in r.json() if not run["auto_scheduled"]]


def test_every_cron_deployment_gets_upcoming_runs_on_sqlite(stack) -> None:
    """The scheduler (on SQLite here; on PostgreSQL in the production-path test) makes the upcoming
    runs of every cron deployment of prefect.yaml, and its log holds no scheduler or database error."""
    checks = wait_for_schedules(stack["api"], API_AUTH_STRING, timeout=180, expect=3)
    assert [c.deployment for c in checks] == [
        "drift/drift-daily",
        "evaluate-champion/evaluate-nightly",
        "retrain/retrain-nightly",
    ]
    assert all(c.ok and c.upcoming >= 1 for c in checks), checks
    errors = scheduler_errors(stack["server"].log.read_text())
    assert not errors, errors[:5]


def test_signed_delivery_becomes_one_event_and_a_triggered_run(stack) -> None:
    body = json.dumps({"workspace": "site-qa", "project": "cracks-3ii36", "version": 7}).encode()
    r = post(stack["url"], "/hooks/roboflow", body, delivery="rf-delivery-1")
    assert r.status_code == 202, r.text
    event_id = r.json()["event_id"]
    got = wait_for(lambda: [e for e in events(stack["api"], "drywall.dataset.published") if e["id"] == event_id])
    assert got and got[0]["payload"]["version"] == 7 and got[0]["payload"]["delivery"] == "rf-delivery-1"
    assert got[0]["resource"]["prefect.resource.id"] == "drywall.dataset.site-qa.cracks-3ii36"

    def triggered() -> list[dict]:  # other tests of this module's stack run the deployment too
        return [r for r in flow_runs(stack["api"], "retrain/retrain-nightly") if r["parameters"].get("sources")]

    runs = wait_for(triggered, timeout=60)
    assert runs, "the deployment trigger created a retrain run"
    source = runs[0]["parameters"]["sources"][0]
    assert (source["kind"], source["workspace"], source["project"], str(source["version"])) == (
        "roboflow",
        "site-qa",
        "cracks-3ii36",
        "7",
    )

    again = post(stack["url"], "/hooks/roboflow", body, delivery="rf-delivery-1")
    assert again.status_code == 200 and again.json()["event_id"] == event_id
    time.sleep(2)
    assert (
        len(
            [
                e
                for e in events(stack["api"], "drywall.dataset.published")
                if e["payload"].get("delivery") == "rf-delivery-1"
            ]
        )
        == 1
    )


def test_s3_notification_triggers_drift_and_field_predictions(stack) -> None:
    note = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": "field"}, "object": {"key": "field-images/site+7/img%231.jpg"}},
            }
        ]
    }
    r = post(stack["url"], "/hooks/field-images", json.dumps(note).encode())
    assert r.status_code == 202, r.text
    for deployment in ("drift/drift-daily", "predict-field/predict-field"):
        runs = wait_for(lambda d=deployment: [r for r in flow_runs(stack["api"], d) if r["parameters"].get("keys")], 60)
        assert runs and runs[0]["parameters"]["bucket"] == "field", deployment
        assert json.loads(runs[0]["parameters"]["keys"]) == ["field-images/site 7/img#1.jpg"]


@pytest.mark.parametrize(
    "bucket, key, why",
    [
        ("field", "/tmp/x/E.jpg", "absolute path"),
        ("field", "field-images/../../E.jpg", "'..' path segment"),
        ("field", "field-images/a\u0000.jpg", "control character"),
        ("field", "models/clipseg-drywall/aliases/champion.json", "outside the field-images prefix"),
        ("elsewhere", "field-images/a.jpg", "not the configured bucket"),
    ],
)
def test_hostile_field_image_keys_are_422_naming_the_key(stack, bucket: str, key: str, why: str) -> None:
    body = json.dumps({"bucket": bucket, "keys": [key]}).encode()
    r = post(stack["url"], "/hooks/field-images", body)
    assert r.status_code == 422 and why in r.json()["error"], r.text
    if bucket == "field":
        assert key.split("/")[-1].replace("\x00", "") in r.json()["error"].replace("\\x00", ""), r.text


@pytest.mark.parametrize("case", ["no-signature", "wrong-signature", "wrong-secret", "stale", "future"])
def test_unauthenticated_deliveries_are_401(stack, case: str) -> None:
    body = b'{"workspace": "w", "project": "p", "version": 1}'
    now = int(time.time())
    kwargs = {
        "no-signature": {"signature": ""},
        "wrong-signature": {"signature": "sha256=" + "0" * 64},
        "wrong-secret": {"secret": "not-the-secret"},
        "stale": {"ts": now - 301},
        "future": {"ts": now + 400},
    }[case]
    if case == "no-signature":
        r = httpx.post(
            f"{stack['url']}/hooks/roboflow",
            content=body,
            timeout=10,
            headers={"X-Drywall-Delivery": "x", "X-Drywall-Timestamp": str(now)},
        )
    else:
        r = post(stack["url"], "/hooks/roboflow", body, **kwargs)
    assert r.status_code == 401, r.text


@pytest.mark.parametrize(
    "body", [b"{not json", b'{"workspace": "w"}', b'{"workspace": "w", "project": "p", "version": "seven"}', b"[1, 2]"]
)
def test_malformed_or_wrong_schema_is_422(stack, body: bytes) -> None:
    assert post(stack["url"], "/hooks/roboflow", body).status_code == 422


def test_oversized_body_is_413(stack) -> None:
    body = json.dumps({"bucket": "b", "keys": ["k" * 1000] * 1100}).encode()
    assert len(body) > 1 << 20
    assert post(stack["url"], "/hooks/field-images", body).status_code == 413


def test_concurrent_deliveries_exactly_one_event_each(stack) -> None:
    ids = [f"burst-{i}-{uuid.uuid4().hex[:6]}" for i in range(40)]
    jobs = ids + ids  # 80 deliveries, each id twice

    def send(delivery: str) -> httpx.Response:
        """As a sender does: a 503 (the other copy is still being emitted) or a timeout is retried."""
        body = json.dumps({"bucket": "field", "keys": [f"field-images/{delivery}.jpg"]}).encode()
        for _ in range(6):
            try:
                r = post(stack["url"], "/hooks/field-images", body, delivery=delivery)
            except httpx.TimeoutException:
                continue
            if r.status_code != 503:
                return r
            time.sleep(1)
        return r

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(send, jobs))
    assert sorted(r.status_code for r in responses) == [200] * 40 + [202] * 40
    by_id: dict[str, set[str]] = {}
    for d, r in zip(jobs, responses, strict=True):
        by_id.setdefault(d, set()).add(r.json()["event_id"])
    assert all(len(v) == 1 for v in by_id.values()), "both copies of a delivery got the same event id"

    def burst_events() -> list[dict]:
        return [
            e
            for e in events(stack["api"], "drywall.field-images.arrived")
            if str(e["payload"].get("delivery", "")).startswith("burst-")
        ]

    wait_for(lambda: len(burst_events()) >= 40, timeout=30)
    time.sleep(1)
    got = burst_events()
    assert len(got) == 40
    assert {e["payload"]["delivery"] for e in got} == set(ids)


def test_receiver_stays_up_and_never_logs_the_secret(stack) -> None:
    assert httpx.get(f"{stack['url']}/healthz", timeout=5).json()["status"] == "ok"
    assert stack["proc"].poll() is None
    log = stack["log"].read_text()
    assert "refused POST /hooks/roboflow" in log
    assert SECRET not in log


FAILING_FLOW = """
from prefect import flow

@flow(name="drywall-alert-probe")
def probe():
    raise RuntimeError("probe failure for the alert test")

try:
    probe()
except RuntimeError:
    pass
"""


def _wait_for(pred, timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.5)
    return False


def _event(name: str, resource: dict[str, str], payload: dict) -> dict:
    return {
        "event": name,
        "resource": resource,
        "payload": payload,
        "id": str(uuid.uuid4()),
        "occurred": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def test_alerts_one_notification_per_failed_run_refusal_regression_and_drift(stack) -> None:
    api, sink, env = stack["api"], stack["sink"], stack["env"]
    names = httpx.post(f"{api}/automations/filter", json={}, auth=API_AUTH, timeout=30).json()
    alerts = [a["name"] for a in names if a["name"].startswith("drywall: ")]
    assert sorted(alerts) == sorted(set(alerts)) and len(alerts) == 6, "setup twice updates, never duplicates"
    # the zombie-run automation is always there (its effect: the production-path test kills a host)
    assert "drywall: crash runs whose heartbeats stopped" in alerts

    r = subprocess.run([sys.executable, "-c", FAILING_FLOW], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = httpx.post(
        f"{api}/flow_runs/filter",
        json={"flows": {"name": {"any_": ["drywall-alert-probe"]}}},
        auth=API_AUTH,
        timeout=30,
    ).json()
    (run,) = runs
    assert run["state_type"] == "FAILED"

    model = {"prefect.resource.id": "drywall.model.drywall-clipseg"}
    events = [
        _event(
            "drywall.drift.detected",
            {"prefect.resource.id": "drywall.field-images"},
            {"drifted_share": 0.75, "drifted_columns": ["brightness_mean"], "n_current": 12, "champion": "v9"},
        ),
        _event(  # as publishing emits it for a regression: alerted
            "drywall.gate.refused",
            {**model, "drywall.regression": "true"},
            {"version": "v12", "champion": "v9", "reasons": ["crack: mIoU regresses 0.610 -> 0.520"]},
        ),
        _event(  # refused for no improvement: an ordinary night, no alert
            "drywall.gate.refused",
            {**model, "drywall.regression": "false"},
            {"version": "v13", "champion": "v9", "reasons": ["mIoU gain 0.001 < 0.005"]},
        ),
        _event("drywall.model.regressed", model, {"version": "v9", "regressions": ["crack: mIoU 0.610 -> 0.500"]}),
        _event(  # as a prediction service emits it when a new champion fails its warm-up
            "drywall.serve.refused",
            {"prefect.resource.id": "drywall.serve.host-a", "drywall.model": "drywall-clipseg"},
            {
                "version": "v14",
                "kind": "warmup",
                "reason": "warm-up masks differ (mask IoU 0.41 < 0.98)",
                "serving": "v9",
            },
        ),  # fmt: skip
    ]
    assert httpx.post(f"{api}/events", json=events, timeout=30).status_code == 401, "no auth, no events"
    assert httpx.post(f"{api}/events", json=events, auth=API_AUTH, timeout=30).status_code == 204

    def about_run() -> list[dict]:
        return [m for m in sink.messages if run["name"] in m.get("text", "")]

    def about_drift() -> list[dict]:
        return [m for m in sink.messages if "drifted" in m.get("text", "")]

    def about(text: str) -> list[dict]:
        return [m for m in sink.messages if text in m.get("text", "")]

    assert _wait_for(
        lambda: (
            about_run()
            and about_drift()
            and about("candidate v12 refused")
            and about("champion v9 regressed")
            and about("refused model v14")
        )
    ), f"missing notifications: {sink.messages}"
    time.sleep(5)  # a duplicate would arrive within this window
    (message,) = about_run()
    assert "Failed" in message["text"] and "drywall-alert-probe" in message["text"]
    assert "probe failure for the alert test" in message["text"]
    (drift,) = about_drift()
    assert "champion v9" in drift["text"] and "75% of features" in drift["text"] and "brightness_mean" in drift["text"]
    (refused,) = about("candidate v12 refused")
    assert "champion stays v9" in refused["text"] and "mIoU regresses 0.610 -> 0.520" in refused["text"]
    assert not about("v13"), "a refusal without a regression is not an alert"
    (regressed,) = about("champion v9 regressed")
    assert "crack: mIoU 0.610 -> 0.500" in regressed["text"]
    (serve,) = about("refused model v14")
    assert (
        "drywall.serve.host-a" in serve["text"] and "keeps serving v9" in serve["text"] and "IoU 0.41" in serve["text"]
    )
