"""API keys and rate limits of the prediction service.

Keys are stored as ``sha256:<hex>`` lines (``DRYWALL_SERVE__API_KEYS_FILE``), never in clear: a
leaked key file lets nobody in. A presented key is hashed and compared with every stored hash in
constant time (:func:`hmac.compare_digest`), so the time taken says nothing about how close it was.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from drywall_core.base.errors import InputError

_LINE = re.compile(r"sha256:([0-9a-f]{64})")


def hash_key(key: str) -> str:
    """The line that stores ``key`` in a key file."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRing:
    """The hashes of the accepted keys; :meth:`identify` names a key by its hash's first 12 digits."""

    hashes: tuple[str, ...]
    source: str = ""

    @classmethod
    def from_file(cls, path: Path) -> KeyRing:
        """Read a key file; a line that is not ``sha256:<64 hex>``, a comment or blank is refused by number."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise InputError(f"{path}: cannot read the API key file ({exc.strerror or exc})") from None
        hashes = []
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            m = _LINE.fullmatch(line.lower())
            if not m:
                raise InputError(
                    f"{path}:{n}: not a 'sha256:<64 hex digits>' line (store keys hashed: drywall serve hash-key)"
                )
            hashes.append(m[1])
        if not hashes:
            raise InputError(f"{path}: no API key in the file; the service would refuse every request")
        return cls(tuple(hashes), str(path))

    def identify(self, authorization: str | None) -> str | None:
        """The key's id (hash prefix) for ``Authorization: Bearer <key>``, or None."""
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        presented = hashlib.sha256(key.strip().encode()).hexdigest()
        found = None
        for stored in self.hashes:  # every hash compared: no early exit
            if hmac.compare_digest(presented, stored):
                found = stored
        return found[:12] if found else None


@dataclass
class RateLimiter:
    """A token bucket per caller: ``burst`` requests at once, refilled at ``per_min`` a minute."""

    per_min: float
    burst: int
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # who -> (tokens, at)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, who: str, now: float | None = None) -> float:
        """0 when ``who`` may go now (a token is taken), else the seconds until it may."""
        now = time.monotonic() if now is None else now
        rate = self.per_min / 60.0
        with self._lock:
            tokens, at = self._buckets.get(who, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * rate)
            if tokens >= 1.0:
                self._buckets[who] = (tokens - 1.0, now)
                return 0.0
            self._buckets[who] = (tokens, now)
            return (1.0 - tokens) / rate


def add_key(path: Path, key: str) -> None:
    """Append ``key``'s hash line to the key file, created readable by its owner only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(hash_key(key) + "\n")
