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
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from pydantic import BaseModel, Field, ValidationError

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
    try:
        ts = int(timestamp)
    except ValueError:
        raise SignatureError("timestamp is not unix seconds") from None
    if abs((now if now is not None else time.time()) - ts) > window_s:
        raise SignatureError(f"timestamp outside the {window_s}s replay window")
    if not any(hmac.compare_digest(sign(s, timestamp, body), signature) for s in secrets if s):
        raise SignatureError("signature mismatch")


class DatasetPublished(BaseModel):
    workspace: str = Field(min_length=1, max_length=200)
    project: str = Field(min_length=1, max_length=200)
    version: int = Field(ge=1)


class FieldImagesArrived(BaseModel):
    bucket: str = Field(min_length=1, max_length=255)
    keys: list[str] = Field(min_length=1, max_length=10_000)


class SchemaError(Exception):
    """Malformed JSON or a body that does not fit the endpoint's schema (HTTP 422)."""


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SchemaError(f"malformed JSON: {exc}") from None


def parse_dataset(body: bytes) -> DatasetPublished:
    try:
        return DatasetPublished.model_validate(_json(body))
    except ValidationError as exc:
        raise SchemaError(_first_error(exc)) from None


def parse_field_images(body: bytes) -> FieldImagesArrived:
    """``{"bucket", "keys"}`` or an S3 event notification (``{"Records": [...]}``, keys URL-encoded)."""
    data = _json(body)
    try:
        if isinstance(data, dict) and "Records" in data:
            records = [
                r for r in data["Records"] if str(r.get("eventName", "ObjectCreated")).startswith("ObjectCreated")
            ]
            buckets = {r["s3"]["bucket"]["name"] for r in records}
            if len(buckets) != 1:
                raise SchemaError(f"S3 notification must name exactly one bucket, got {sorted(buckets)}")
            keys = [unquote_plus(r["s3"]["object"]["key"]) for r in records]
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


class DeliveryStore:
    """Delivery ids in SQLite: the first delivery of an id emits, repeats get the original answer.

    Safe across threads and processes: the first ``INSERT`` of an id claims it; concurrent repeats
    wait for the claim to finish. A failed emission releases the claim so the sender may retry.
    """

    def __init__(self, path: Path, wait_s: float = 30.0) -> None:
        self.path, self.wait_s = Path(path), wait_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, state TEXT NOT NULL, "
                "response TEXT, received_at REAL NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def process(self, delivery_id: str, emit: Callable[[], dict[str, Any]]) -> Outcome:
        """Run ``emit`` once per delivery id, ever; return its answer for every copy of the delivery."""
        with closing(self._connect()) as db:
            try:
                db.execute(
                    "INSERT INTO deliveries (id, state, received_at) VALUES (?, 'pending', ?)",
                    (delivery_id, time.time()),
                )
            except sqlite3.IntegrityError:
                return Outcome(200, {**self._wait_done(db, delivery_id), "duplicate": True})
            try:
                body = emit()
            except BaseException:
                db.execute("DELETE FROM deliveries WHERE id = ? AND state = 'pending'", (delivery_id,))
                raise
            db.execute(
                "UPDATE deliveries SET state = 'done', response = ? WHERE id = ?", (json.dumps(body), delivery_id)
            )
            return Outcome(202, body)

    def _wait_done(self, db: sqlite3.Connection, delivery_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.wait_s
        while True:
            row = db.execute("SELECT state, response FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            if row is None:
                raise RuntimeError(f"delivery {delivery_id}: first attempt failed; retry")
            if row[0] == "done":
                return json.loads(row[1])
            if time.monotonic() > deadline:
                raise TimeoutError(f"delivery {delivery_id} still in progress")
            time.sleep(0.02)

    def count(self) -> int:
        with closing(self._connect()) as db:
            return db.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'done'").fetchone()[0]
