"""The webhook receiver under faults, over real HTTP: a slow or dead Prefect API, a receiver killed
mid-emission, reused delivery ids and hostile inputs.

The receiver runs in uvicorn on loopback and emits with its real HTTP emitter to a loopback
stand-in of the Prefect events API whose latency the test controls (the fault being injected).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import sqlite3
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import uvicorn

from deployments.webhook import create_app, prefect_emitter
from drywall_core.data.webhooks import DeliveryStore, FieldImagesPolicy, sign

pytestmark = pytest.mark.integration
SECRET = "whsec-faults-1b2c"
DATASET = b'{"workspace": "acme-sites", "project": "cracks-3ii36", "version": 4}'


class FakePrefect:
    """``POST /api/events`` and ``GET /api/health`` with a settable delay; counts events received."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.events: list[dict] = []
        self.fail_after: int | None = None  # answer 500 once this many events were taken
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a) -> None:  # quiet
                pass

            def _answer(self, code: int, body: bytes = b"{}") -> None:
                time.sleep(outer.delay)
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(200 if self.path == "/api/health" else 404, b"true")

            def do_POST(self) -> None:
                data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(outer.delay)
                if outer.fail_after is not None and len(outer.events) >= outer.fail_after:
                    self._answer(500)
                    return
                outer.events += data
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver(tmp_path: Path):
    api = FakePrefect()
    store = DeliveryStore(tmp_path / "deliveries.sqlite", wait_s=1.0, lease_s=30.0)
    policy = FieldImagesPolicy(bucket="field-images", prefix="")
    app = create_app([SECRET], store, prefect_emitter(api.url), health_url=f"{api.url}/health", field_policy=policy)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            httpx.get(f"{url}/healthz", timeout=2)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield {"url": url, "api": api, "db": tmp_path / "deliveries.sqlite"}
    api.delay = 0
    server.should_exit = True
    thread.join(10)
    api.server.shutdown()


def post(url: str, path: str, body: bytes, delivery: str | None = None, ts: str | None = None, **headers):
    stamp = ts or str(int(time.time()))
    h = {
        "X-Drywall-Timestamp": stamp,
        "X-Drywall-Delivery": delivery or str(uuid.uuid4()),
        "X-Drywall-Signature": sign(SECRET, stamp, body),
        "Content-Type": "application/json",
        **headers,
    }
    return httpx.post(f"{url}{path}", content=body, headers=h, timeout=30)


def test_slow_prefect_api_does_not_block_health_or_other_work(receiver) -> None:
    receiver["api"].delay = 3.0
    slow = threading.Thread(target=post, args=(receiver["url"], "/hooks/roboflow", DATASET, "slow-1"))
    slow.start()
    time.sleep(0.3)  # the delivery is now waiting on the API
    t0 = time.monotonic()
    health = httpx.get(f"{receiver['url']}/healthz", timeout=10)
    took = time.monotonic() - t0
    slow.join()
    assert health.status_code == 200
    assert took < 1.8, f"/healthz took {took:.1f}s while a delivery waited on the API"
    assert health.json()["prefect_api_reachable"] is False, "a 3 s health answer is not 'reachable'"
    receiver["api"].delay = 0
    assert httpx.get(f"{receiver['url']}/healthz", timeout=10).json()["prefect_api_reachable"] is True


def test_emission_timeout_is_bounded_and_retry_goes_through(receiver) -> None:
    receiver["api"].delay = 8.0  # longer than the emitter's timeout
    t0 = time.monotonic()
    r = post(receiver["url"], "/hooks/roboflow", DATASET, "bounded-1")
    assert r.status_code == 503 and time.monotonic() - t0 < 7.5
    receiver["api"].delay = 0
    r = post(receiver["url"], "/hooks/roboflow", DATASET, "bounded-1")
    assert r.status_code == 202, "the claim was released: the sender's retry goes through"


def _claim_and_hang(db: str, delivery: str, ready) -> None:
    store = DeliveryStore(Path(db))

    def hang() -> dict:
        ready.set()
        time.sleep(600)
        return {}

    store.process(delivery, hang)


def test_receiver_killed_mid_emission_does_not_wedge_the_delivery(receiver) -> None:
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_claim_and_hang, args=(str(receiver["db"]), "wedge-1", ready))
    proc.start()
    assert ready.wait(30), "the other receiver claimed the delivery"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    t0 = time.monotonic()
    r = post(receiver["url"], "/hooks/roboflow", DATASET, "wedge-1")
    assert r.status_code == 202, r.text
    assert time.monotonic() - t0 < 1.0, "a dead owner's claim is reclaimed at once, not after a wait"
    assert [e["payload"]["delivery"] for e in receiver["api"].events] == ["wedge-1"]


def test_claim_of_another_host_is_reclaimed_when_its_lease_expires(receiver) -> None:
    db = sqlite3.connect(receiver["db"], isolation_level=None)
    for delivery, until in (("expired-1", time.time() - 1), ("live-1", time.time() + 60)):
        db.execute(
            "INSERT INTO deliveries (id, state, received_at, fingerprint, owner, lease_until) "
            "VALUES (?, 'pending', ?, '', 'other-host:4242:ab', ?)",
            (delivery, time.time(), until),
        )
    db.close()
    assert post(receiver["url"], "/hooks/roboflow", DATASET, "expired-1").status_code == 202
    busy = post(receiver["url"], "/hooks/roboflow", DATASET, "live-1")
    assert busy.status_code == 503 and "retry" in busy.json()["error"]


def test_delivery_id_reused_with_another_body_or_route_is_409(receiver) -> None:
    url = receiver["url"]
    assert post(url, "/hooks/roboflow", DATASET, "dup-1").status_code == 202
    assert post(url, "/hooks/roboflow", DATASET, "dup-1").status_code == 200
    other = DATASET.replace(b"4", b"5")
    assert post(url, "/hooks/roboflow", other, "dup-1").status_code == 409
    field = b'{"bucket": "field-images", "keys": ["a.jpg"]}'
    assert post(url, "/hooks/field-images", field, "dup-1").status_code == 409
    assert len(receiver["api"].events) == 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"workspace": "acme", "project": "p1", "version": "4"}',
        b'{"workspace": "acme", "project": "p1", "version": 4.0}',
        b'{"workspace": "acme", "project": "p1", "version": true}',
        b'{"workspace": "acme", "project": "p1", "version": 100000000000000000000000000000}',
        b'{"workspace": "acme", "project": "p1", "version": ' + b"9" * 5000 + b"}",
        b'{"workspace": "../../etc", "project": "p1", "version": 4}',
        b'{"workspace": "acme", "project": "a/b", "version": 4}',
        b'{"workspace": "ACME Sites", "project": "p1", "version": 4}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
    ],
    ids=["str", "float", "bool", "huge", "5000-digits", "dotdot", "slash", "space", "nested-list", "nested-obj"],
)
def test_hostile_bodies_are_422_never_500(receiver, body: bytes) -> None:
    r = post(receiver["url"], "/hooks/roboflow", body)
    assert r.status_code == 422, (r.status_code, r.text[:200])
    assert receiver["api"].events == []


def test_hostile_headers_are_refused_never_500(receiver) -> None:
    url = receiver["url"]
    assert post(url, "/hooks/roboflow", DATASET, ts="9" * 5000).status_code == 401
    assert post(url, "/hooks/roboflow", DATASET, ts="-5").status_code == 401
    assert post(url, "/hooks/roboflow", DATASET, ts="17e8").status_code == 401
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:  # no client library sends this
        raw.sendall(b"POST /hooks/roboflow HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 40 + b"\r\n\r\n{}")
        status = raw.recv(100).split(b" ")[1]
    assert status in (b"400", b"413"), status
    assert receiver["api"].events == []


def test_a_large_key_list_becomes_several_events_none_over_the_cap(receiver) -> None:
    """8,000 keys (about 900 KB, under the receiver's 1 MiB limit) in one event were 1.8 MB: Prefect's
    server drops such an event without an error. Split into parts, every key arrives, once."""
    keys = [f"site-{i % 40:02d}/day-{i // 40:03d}/IMG_{i:06d}_{'x' * 80}.jpg" for i in range(8000)]
    body = json.dumps({"bucket": "field-images", "keys": keys}).encode()
    assert 800_000 < len(body) < 1 << 20
    r = post(receiver["url"], "/hooks/field-images", body, "big-1")
    assert r.status_code == 202, r.text
    events = receiver["api"].events
    assert len(events) == len(r.json()["event_ids"]) >= 2
    assert all(len(json.dumps(e)) < 1_500_000 for e in events), "every event under Prefect's cap"
    assert [k for e in events for k in e["payload"]["keys"]] == keys, "every key, in order, once"
    assert [e["payload"]["part"] for e in events] == list(range(1, len(events) + 1))
    assert all(json.loads(e["payload"]["keys_json"]) == e["payload"]["keys"] for e in events)
    again = post(receiver["url"], "/hooks/field-images", body, "big-1")
    assert again.status_code == 200 and again.json()["event_ids"] == r.json()["event_ids"]
    assert len(receiver["api"].events) == len(events), "nothing emitted twice"


def test_a_delivery_is_done_only_once_every_part_is_accepted(receiver) -> None:
    """The API fails on the second part: 503, the delivery stays open, the retry sends the same ids."""
    keys = [f"k/{i:06d}_{'y' * 100}.jpg" for i in range(6000)]
    body = json.dumps({"bucket": "field-images", "keys": keys}).encode()
    receiver["api"].fail_after = 1
    first = post(receiver["url"], "/hooks/field-images", body, "flaky-1")
    assert first.status_code == 503, first.text
    sent_before = [e["id"] for e in receiver["api"].events]
    receiver["api"].fail_after = None
    retry = post(receiver["url"], "/hooks/field-images", body, "flaky-1")
    assert retry.status_code == 202, retry.text
    ids = retry.json()["event_ids"]
    assert ids[: len(sent_before)] == sent_before, "parts already sent keep their ids (the API dedupes by id)"
    assert len({e["id"] for e in receiver["api"].events}) == len(ids)
