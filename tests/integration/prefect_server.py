"""Start and stop a real ``prefect server start`` on a free loopback port (tests and the stack)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok_within(url: str, timeout: float) -> bool:
    """Poll ``url`` until it answers 200 (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.25)
    return False


class PrefectServer:
    """``prefect server start``; with ``auth_string`` (``user:password``) its API demands basic auth.

    ``database_url``: PostgreSQL instead of SQLite under ``home``. ``env()`` serves the server and its
    clients alike: the server reads ``PREFECT_SERVER_API_AUTH_STRING``, clients (CLI, workers, flows)
    ``PREFECT_API_AUTH_STRING``.
    """

    def __init__(
        self, home: Path, port: int | None = None, auth_string: str | None = None, database_url: str | None = None
    ) -> None:
        self.home, self.port = Path(home), port or free_port()
        self.auth_string, self.database_url = auth_string, database_url
        self.proc: subprocess.Popen | None = None

    @property
    def auth(self) -> tuple[str, str] | None:
        """For httpx's ``auth=``: the same Basic header Prefect's client sends."""
        if not self.auth_string:
            return None
        user, _, password = self.auth_string.partition(":")
        return (user, password)

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        if self.auth_string:
            env["PREFECT_SERVER_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"] = self.auth_string
        if self.database_url:  # kept, so a restarted server finds its database again
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        return env

    def start(self, timeout: float = 120) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        prefect = str(Path(sys.executable).parent / "prefect")
        self.proc = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env(),
            stdout=open(self.home / "server.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if http_ok_within(f"{self.api_url}/health", timeout):
            return self
        self.stop()
        raise RuntimeError(f"prefect server did not answer in {timeout}s; see {self.home / 'server.log'}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
