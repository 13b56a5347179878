"""Webhook deliveries: signature checks, replay window, payload schemas, idempotency.

Contract (ARCHITECTURE.md): ``X-Drywall-Timestamp`` (unix seconds), ``X-Drywall-Delivery`` (unique
id), ``X-Drywall-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>``;
timestamps more than 300 s away from now are refused. Plain Python: the HTTP app and the Prefect
event emission live in ``deployments/webhook.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drywall_core.base.errors import InputError
from drywall_core.base.fsutil import check_relative
from drywall_core.base.procs import pid_alive

REPLAY_WINDOW_S = 300
MAX_BODY_BYTES = 1 << 20


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value for a body (what a sender computes)."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class SignatureError(Exception):
    """Missing or wrong signature, or a timestamp outside the replay window (HTTP 401)."""


def verify(
    secrets: list[str],
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: float | None = None,
    window_s: int = REPLAY_WINDOW_S,
) -> None:
    """Raise :class:`SignatureError` unless one of ``secrets`` signed ``timestamp.body`` recently.

    Several secrets are accepted so that a secret can be rotated without downtime.
    """
    if not timestamp or not signature:
        raise SignatureError("missing signature or timestamp header")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12) or len(signature) > 200:
        raise SignatureError("timestamp is not unix seconds")  # bounded before any arithmetic
    ts = int(timestamp)
    if abs((now if now is not None else time.time()) - ts) > window_s:
        raise SignatureError(f"timestamp outside the {window_s}s replay window")
    if not any(hmac.compare_digest(sign(s, timestamp, body), signature) for s in secrets if s):
        raise SignatureError("signature mismatch")


SLUG = r"^[a-z0-9](?:[a-z0-9_-]{0,98}[a-z0-9])?$"  # Roboflow workspace/project slugs: safe as path parts
BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"  # S3 bucket naming rules
MAX_VERSION = 1_000_000


class DatasetPublished(BaseModel):
    """Strict: no string, float or boolean is coerced to an integer; slugs before they become paths."""

    model_config = ConfigDict(strict=True, extra="ignore")
    workspace: str = Field(pattern=SLUG)
    project: str = Field(pattern=SLUG)
    version: int = Field(ge=1, le=MAX_VERSION)


class FieldImagesArrived(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    bucket: str = Field(pattern=BUCKET)
    keys: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(min_length=1, max_length=10_000)


class SchemaError(Exception):
    """Malformed JSON or a body that does not fit the endpoint's schema (HTTP 422)."""


MAX_DEPTH = 32


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, without recursion (so no input can exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            break
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def _json(body: bytes) -> Any:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise SchemaError("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python will convert
        raise SchemaError(f"malformed JSON: {exc}") from None
    if _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise SchemaError(f"malformed JSON: nested deeper than {MAX_DEPTH} levels")
    return data


def parse_dataset(body: bytes) -> DatasetPublished:
    try:
        return DatasetPublished.model_validate(_json(body))
    except ValidationError as exc:
        raise SchemaError(_first_error(exc)) from None


@dataclass(frozen=True)
class FieldImagesPolicy:
    """What a field-images delivery may name: the configured bucket, keys under the field-images prefix."""

    bucket: str | None
    prefix: str = "field-images/"


def check_field_images(f: FieldImagesArrived, policy: FieldImagesPolicy) -> FieldImagesArrived:
    """Every key a plain relative key under the prefix, in the configured bucket; else refused by name."""
    if policy.bucket is None:
        raise SchemaError("no S3 bucket is configured here (DRYWALL_S3_BUCKET): field images cannot be taken")
    if f.bucket != policy.bucket:
        raise SchemaError(f"bucket '{f.bucket}' is not the configured bucket '{policy.bucket}'")
    for key in f.keys:
        try:
            check_relative(key, "S3 key")
        except InputError as exc:
            raise SchemaError(str(exc)) from None
        if not key.startswith(policy.prefix):
            raise SchemaError(f"S3 key '{key[:200]}' is outside the field-images prefix '{policy.prefix}'")
    return f


EVENT_KEYS_BYTES = 300_000  # keys per event: the payload carries them twice (list and JSON), well under the cap


def chunk_keys(keys: list[str], max_bytes: int = EVENT_KEYS_BYTES) -> list[list[str]]:
    """Split a key list so that every event stays far below Prefect's event size cap (1.5 MB), which
    the server enforces by dropping the event without an error: 8,000 keys in one event vanished."""
    chunks: list[list[str]] = [[]]
    size = 0
    for key in keys:
        cost = len(json.dumps(key)) + 2
        if chunks[-1] and size + cost > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(key)
        size += cost
    return chunks


def parse_field_images(body: bytes, policy: FieldImagesPolicy | None = None) -> FieldImagesArrived:
    """``{"bucket", "keys"}`` or an S3 event notification (``{"Records": [...]}``, keys URL-encoded),
    checked against ``policy`` (the receiver always gives one; decoding alone is tested without)."""
    parsed = _parse_field_images(body)
    return check_field_images(parsed, policy) if policy is not None else parsed


def _parse_field_images(body: bytes) -> FieldImagesArrived:
    data = _json(body)
    try:
        if isinstance(data, dict) and "Records" in data:
            records = [
                r for r in data["Records"] if str(r.get("eventName", "ObjectCreated")).startswith("ObjectCreated")
            ]
            buckets = {r["s3"]["bucket"]["name"] for r in records}
            if len(buckets) != 1:
                raise SchemaError(f"S3 notification must name exactly one bucket, got {sorted(buckets)}")
            keys = [unquote_plus(str(r["s3"]["object"]["key"])) for r in records]
            return FieldImagesArrived(bucket=buckets.pop(), keys=keys)
        return FieldImagesArrived.model_validate(data)
    except ValidationError as exc:
        raise SchemaError(_first_error(exc)) from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise SchemaError(f"malformed S3 event notification (missing {exc})") from None


def _first_error(exc: ValidationError) -> str:
    e = exc.errors()[0]
    return f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"


@dataclass
class Outcome:
    status: int  # 202 first delivery, 200 repeat
    body: dict[str, Any]


class DeliveryConflict(Exception):
    """A delivery id already used for a different body or route (HTTP 409)."""


class DeliveryBusy(Exception):
    """Another live attempt holds the delivery's claim; the sender should retry (HTTP 503)."""


class DeliveryStore:
    """Delivery ids in SQLite: the first delivery of an id emits, repeats get the original answer.

    The first ``INSERT`` of an id claims it with a lease (owner = host, pid and a per-store token;
    expiry = now + ``lease_s``). A copy that finds a pending claim waits for it, but takes it over
    as soon as the lease has expired or its owner process on this host is gone -- a receiver killed
    mid-emission never wedges a delivery, and a restarted one reclaims it at once. A failed
    emission releases the claim so the sender may retry. Each id is bound to the route and body
    hash it first came with: the same id with another body is a conflict, not a duplicate.
    """

    def __init__(self, path: Path, wait_s: float = 5.0, lease_s: float = 30.0) -> None:
        self.path, self.wait_s, self.lease_s = Path(path), wait_s, lease_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, state TEXT NOT NULL, "
                "response TEXT, received_at REAL NOT NULL)"
            )
            cols = {r[1] for r in db.execute("PRAGMA table_info(deliveries)")}
            for col, kind in (("fingerprint", "TEXT"), ("owner", "TEXT"), ("lease_until", "REAL")):
                if col not in cols:  # stores written by an older receiver
                    db.execute(f"ALTER TABLE deliveries ADD COLUMN {col} {kind}")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def _orphaned(self, owner: str | None, lease_until: float | None) -> bool:
        """A claim nobody will finish: its lease ran out, or its process on this host is gone."""
        if lease_until is None or time.time() >= lease_until:
            return True
        host, _, rest = (owner or "").partition(":")
        pid = rest.partition(":")[0]
        return host == socket.gethostname() and pid.isdigit() and owner != self.owner and not pid_alive(int(pid))

    def _claim(self, db: sqlite3.Connection, delivery_id: str, fingerprint: str) -> bool:
        """Insert a fresh claim, or take over an orphaned one; False if the id is taken."""
        lease = time.time() + self.lease_s
        try:
            db.execute(
                "INSERT INTO deliveries (id, state, received_at, fingerprint, owner, lease_until) "
                "VALUES (?, 'pending', ?, ?, ?, ?)",
                (delivery_id, time.time(), fingerprint, self.owner, lease),
            )
            return True
        except sqlite3.IntegrityError:
            pass
        row = db.execute(
            "SELECT state, fingerprint, owner, lease_until FROM deliveries WHERE id = ?", (delivery_id,)
        ).fetchone()
        if row is None:
            return self._claim(db, delivery_id, fingerprint)  # released in between: try again
        state, fp, owner, until = row
        if fp and fingerprint and fp != fingerprint:
            raise DeliveryConflict(f"delivery id {delivery_id} was already used for a different body or route")
        if state == "pending" and self._orphaned(owner, until):
            took = db.execute(
                "UPDATE deliveries SET owner = ?, lease_until = ? WHERE id = ? AND state = 'pending' "
                "AND owner IS ? AND lease_until IS ?",
                (self.owner, lease, delivery_id, owner, until),
            )
            return took.rowcount == 1
        return False

    def process(self, delivery_id: str, emit: Callable[[], dict[str, Any]], fingerprint: str = "") -> Outcome:
        """Run ``emit`` once per delivery id, ever; return its answer for every copy of the delivery."""
        with closing(self._connect()) as db:
            deadline = time.monotonic() + self.wait_s
            while not self._claim(db, delivery_id, fingerprint):
                row = db.execute("SELECT state, response FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
                if row is not None and row[0] == "done":
                    return Outcome(200, {**json.loads(row[1]), "duplicate": True})
                if time.monotonic() > deadline:
                    raise DeliveryBusy(f"delivery {delivery_id} is being processed by another attempt; retry")
                time.sleep(0.02)
            try:
                body = emit()
            except BaseException:
                db.execute(
                    "DELETE FROM deliveries WHERE id = ? AND state = 'pending' AND owner = ?",
                    (delivery_id, self.owner),
                )
                raise
            db.execute(
                "UPDATE deliveries SET state = 'done', response = ?, lease_until = NULL WHERE id = ?",
                (json.dumps(body), delivery_id),
            )
            return Outcome(202, body)

    def count(self) -> int:
        with closing(self._connect()) as db:
            return db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'done'").fetchone()[0]


def fingerprint(route: str, body: bytes) -> str:
    """What a delivery id is bound to: the route and the exact body."""
    return hashlib.sha256(route.encode() + b"\n" + body).hexdigest()
