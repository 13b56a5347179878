"""Closing the loop from live traffic, both off by default: capture and shadow.

**Capture** (``DRYWALL_SERVE__CAPTURE``): each photo users send is stored once (by sha256) under the
field-images prefix, ``served/<UTC day>/<sha256>.<format>``, beside a JSON line of what the model
answered, so drift, field predictions and the label queue see what users actually send. The name
comes from the photo's content and its decoded format, never from the client. Days older than
``DRYWALL_SERVE__CAPTURE_DAYS`` are removed, and at most ``DRYWALL_SERVE__CAPTURE_PER_DAY`` photos
a day are kept per replica.

**Shadow** (``DRYWALL_SERVE__SHADOW_SHARE`` > 0): a sampled share of requests also runs on a
challenger -- ``DRYWALL_SERVE__SHADOW_VERSION``, or the newest version published after the
champion -- on a thread of its own, after the answer is sent (the queue is bounded: under load a
shadow request is dropped, never waited for). Per prompt, the mask IoU between the two answers
is kept (``/v1/models``, metrics) and added to the Evidently workspace in runs of
``DRYWALL_SERVE__SHADOW_FLUSH`` requests, beside the drift and field-prediction signals.

Both run on their own threads: the answer never waits for a store write or a second model.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from drywall_core.base.config import ServeConfig
from drywall_core.model.metrics import iou
from drywall_core.stages.context import Context

log = logging.getLogger(__name__)

CAPTURE_FOLDER = "served"
FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp", "MPO": ".jpg"}


@dataclass
class Captured:
    """One photo to keep: its bytes, hash, decoded format and the answer's summary."""

    data: bytes
    sha256: str
    fmt: str
    summary: dict[str, Any]


class Capture:
    """Stores sent photos under the field-images prefix, one writer thread, bounded per day."""

    def __init__(
        self, ctx: Context, cfg: ServeConfig, bucket: Callable[[], Any], on_stored: Callable[[], None] | None = None
    ) -> None:
        self.ctx, self.cfg, self.bucket, self.on_stored = ctx, cfg, bucket, on_stored  # bucket: the S3 client
        self._queue: queue.Queue[Captured | None] = queue.Queue(maxsize=256)
        self._seen: set[str] = set()
        self._day, self._today = "", 0
        self.stored = 0
        self._thread = threading.Thread(target=self._run, name="drywall-capture", daemon=True)
        self._thread.start()

    def offer(self, data: bytes, sha256: str, photo_format: str | None, summary: dict[str, Any]) -> bool:
        """Queue a photo to keep; False when it is a duplicate, of no known format, or the queue is full."""
        ext = FORMATS.get((photo_format or "").upper())
        if ext is None or sha256 in self._seen:
            return False
        self._seen.add(sha256)
        try:
            self._queue.put_nowait(Captured(data, sha256, ext, summary))
        except queue.Full:
            self._seen.discard(sha256)
            return False
        return True

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._store(item)
            except Exception as exc:  # noqa: BLE001 - a capture lost is a warning; serving goes on
                log.warning("capture of %s failed: %s: %s", item.sha256[:16], type(exc).__name__, exc)

    def _store(self, item: Captured) -> None:
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        if day != self._day:
            self._day, self._today = day, 0
            self._prune(day)
        if self._today >= self.cfg.capture_per_day:
            return
        name = f"{CAPTURE_FOLDER}/{day}/{item.sha256}"
        meta = json.dumps({"sha256": item.sha256, "captured_at": datetime.now(UTC).isoformat(), **item.summary})
        self._put(f"{name}{item.fmt}", item.data)
        self._put(f"{name}.json", meta.encode())
        self._today += 1
        self.stored += 1
        if self.on_stored:
            self.on_stored()

    def _put(self, name: str, data: bytes) -> None:
        s = self.ctx.settings
        if s.s3_bucket:
            self.bucket().put_object(Bucket=s.s3_bucket, Key=f"{s.field_images_prefix}{name}", Body=data)
            return
        from drywall_core.base.fsutil import atomic_open

        path = Path(s.field_images_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as f:
            f.write(data)

    def _prune(self, today: str) -> None:
        """Remove the captured days older than ``capture_days``."""
        import shutil

        s = self.ctx.settings
        oldest = (datetime.strptime(today, "%Y-%m-%d") - timedelta(days=self.cfg.capture_days)).strftime("%Y-%m-%d")
        if s.s3_bucket:
            client, prefix = self.bucket(), f"{s.field_images_prefix}{CAPTURE_FOLDER}/"
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=s.s3_bucket, Prefix=prefix):
                old = [o["Key"] for o in page.get("Contents", []) if o["Key"][len(prefix) :][:10] < oldest]
                for key in old:
                    client.delete_object(Bucket=s.s3_bucket, Key=key)
            return
        root = Path(s.field_images_dir) / CAPTURE_FOLDER
        for folder in root.iterdir() if root.is_dir() else []:
            if folder.is_dir() and folder.name < oldest:
                shutil.rmtree(folder, ignore_errors=True)


@dataclass
class ShadowStats:
    version: str | None = None
    requests: int = 0
    dropped: int = 0
    agreement: dict[str, float] = field(default_factory=dict)  # prompt -> mean mask IoU so far


class Shadow:
    """Runs sampled requests on the challenger after they are answered; keeps and records agreement."""

    def __init__(
        self, ctx: Context, cfg: ServeConfig, challenger: Callable[[], Any], on_row: Callable[[str, float], None]
    ) -> None:
        self.ctx, self.cfg, self.challenger, self.on_row = ctx, cfg, challenger, on_row
        self.stats = ShadowStats()
        self._sums: dict[str, list[float]] = {}
        self._rows: list[dict[str, Any]] = []
        self._queue: queue.Queue[tuple[Image.Image, dict[str, np.ndarray], str] | None] = queue.Queue(maxsize=16)
        self._rng = random.Random(0)
        self._thread = threading.Thread(target=self._run, name="drywall-shadow", daemon=True)
        self._thread.start()

    def offer(self, photo: Image.Image, masks: dict[str, np.ndarray], primary: str) -> None:
        """Sample this answered request for the challenger (never blocks)."""
        if self._rng.random() >= self.cfg.shadow_share:
            return
        try:
            self._queue.put_nowait((photo, masks, primary))
        except queue.Full:
            self.stats.dropped += 1

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)
        self._flush()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._compare(*item)
            except Exception as exc:  # noqa: BLE001 - the shadow never harms serving
                log.warning("shadow comparison failed: %s: %s", type(exc).__name__, exc)

    def _compare(self, photo: Image.Image, masks: dict[str, np.ndarray], primary: str) -> None:
        from drywall_core.model.runtime import probabilities_each

        other = self.challenger()
        if other is None or other.version == primary:
            return
        maps = probabilities_each(other.loaded, [photo], [list(masks)])[0]
        row: dict[str, Any] = {"champion": primary, "challenger": other.version}
        for prompt, mask in masks.items():
            score = iou(maps[prompt] >= other.loaded.threshold_for(prompt), mask)
            self._sums.setdefault(prompt, []).append(score)
            row[prompt] = score
            self.on_row(prompt, score)
        self.stats.version = other.version
        self.stats.requests += 1
        self.stats.agreement = {p: float(np.mean(v)) for p, v in self._sums.items()}
        self._rows.append(row)
        if len(self._rows) >= self.cfg.shadow_flush:
            self._flush()

    def _flush(self) -> None:
        """The rows so far as one Evidently run (agreement per prompt); a failure is a warning."""
        rows, self._rows = self._rows, []
        if not rows:
            return
        import pandas as pd

        from drywall_core.field.monitoring import record_shadow

        s = self.ctx.settings
        prompts = [p for p in rows[0] if p not in ("champion", "challenger")]
        frame = pd.DataFrame([{p: r.get(p) for p in prompts} for r in rows], dtype=float)
        meta = {"champion": rows[-1]["champion"], "challenger": rows[-1]["challenger"], "requests": len(rows)}
        try:
            record_shadow(s.monitoring_target, s.model_name, self.ctx.prompts, frame, meta)
        except Exception as exc:  # noqa: BLE001 - monitoring must not undo serving
            log.warning("shadow agreement not added to Evidently at %s: %s: %s", s.monitoring_target,
                        type(exc).__name__, exc)  # fmt: skip
