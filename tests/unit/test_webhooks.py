"""Webhook domain logic: signatures, replay window, schemas, idempotent delivery store."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from drywall_core.data.webhooks import (
    DeliveryStore,
    SchemaError,
    SignatureError,
    parse_dataset,
    parse_field_images,
    sign,
    verify,
)

BODY = b'{"workspace": "w", "project": "p", "version": 3}'


def test_signature_roundtrip_and_rotation() -> None:
    ts = str(int(time.time()))
    sig = sign("old-secret", ts, BODY)
    verify(["old-secret"], ts, sig, BODY)
    verify(["new-secret", "old-secret"], ts, sig, BODY)  # during rotation both are accepted
    with pytest.raises(SignatureError, match="mismatch"):
        verify(["new-secret"], ts, sig, BODY)
    with pytest.raises(SignatureError, match="mismatch"):
        verify(["old-secret"], ts, sig, BODY + b" ")
    with pytest.raises(SignatureError, match="missing"):
        verify(["old-secret"], ts, None, BODY)


def test_replay_window() -> None:
    now = time.time()
    old = str(int(now) - 301)
    with pytest.raises(SignatureError, match="replay window"):
        verify(["s"], old, sign("s", old, BODY), BODY, now=now)
    future = str(int(now) + 301)
    with pytest.raises(SignatureError, match="replay window"):
        verify(["s"], future, sign("s", future, BODY), BODY, now=now)
    ok = str(int(now) - 299)
    verify(["s"], ok, sign("s", ok, BODY), BODY, now=now)


def test_schemas() -> None:
    assert parse_dataset(BODY).version == 3
    for bad in (b"{nope", b'{"workspace": "w"}', b'{"workspace": "w", "project": "p", "version": 0}', b"[]"):
        with pytest.raises(SchemaError):
            parse_dataset(bad)
    f = parse_field_images(b'{"bucket": "field-images", "keys": ["a.jpg"]}')
    assert f.bucket == "field-images" and f.keys == ["a.jpg"]
    for bad in (
        b'{"bucket": "field-images", "keys": []}',
        b'{"bucket": "b", "keys": ["a.jpg"]}',  # shorter than S3 allows
        b'{"bucket": "Field_Images", "keys": ["a.jpg"]}',
        b'{"bucket": "field-images", "keys": [""]}',
        b'{"bucket": "field-images", "keys": [7]}',
    ):
        with pytest.raises(SchemaError):
            parse_field_images(bad)


def test_s3_event_notification() -> None:
    note = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": "site"}, "object": {"key": "day+1/wall%231.jpg"}},
            },
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "site"}, "object": {"key": "day+1/b.jpg"}}},
            {"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "site"}, "object": {"key": "gone.jpg"}}},
        ]
    }
    f = parse_field_images(json.dumps(note).encode())
    assert f.bucket == "site" and f.keys == ["day 1/wall#1.jpg", "day 1/b.jpg"]
    with pytest.raises(SchemaError, match="malformed S3"):
        parse_field_images(b'{"Records": [{"s3": {}}]}')


def test_delivery_store_emits_once_under_concurrency(tmp_path: Path) -> None:
    store = DeliveryStore(tmp_path / "d.sqlite")
    emitted: list[str] = []
    lock = threading.Lock()

    def deliver(i: int) -> None:
        delivery = f"id-{i % 10}"

        def emit() -> dict:
            time.sleep(0.01)
            with lock:
                emitted.append(delivery)
            return {"event_id": f"ev-{delivery}"}

        out = DeliveryStore(tmp_path / "d.sqlite").process(delivery, emit)
        assert out.body["event_id"] == f"ev-{delivery}"

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(emitted) == sorted(f"id-{i}" for i in range(10))
    assert store.count() == 10


def test_failed_emission_can_be_retried(tmp_path: Path) -> None:
    store = DeliveryStore(tmp_path / "d.sqlite")

    def broken() -> dict:
        raise ConnectionError("prefect api down")

    with pytest.raises(ConnectionError):
        store.process("x", broken)
    out = store.process("x", lambda: {"event_id": "e1"})
    assert out.status == 202 and out.body == {"event_id": "e1"}
    again = store.process("x", lambda: {"event_id": "e2"})
    assert again.status == 200 and again.body["event_id"] == "e1"


def test_delivery_id_is_bound_to_its_body(tmp_path: Path) -> None:
    from drywall_core.data.webhooks import DeliveryConflict, fingerprint

    store = DeliveryStore(tmp_path / "d.sqlite")
    first = fingerprint("/hooks/roboflow", BODY)
    assert store.process("x", lambda: {"event_id": "e1"}, first).status == 202
    assert store.process("x", lambda: {"event_id": "e2"}, first).status == 200
    with pytest.raises(DeliveryConflict, match="different body or route"):
        store.process("x", lambda: {"event_id": "e3"}, fingerprint("/hooks/roboflow", BODY + b" "))
    with pytest.raises(DeliveryConflict):
        store.process("x", lambda: {"event_id": "e4"}, fingerprint("/hooks/field-images", BODY))
    assert store.count() == 1
