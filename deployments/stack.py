"""`drywall stack up|down|status`: a production-like stack on one machine, on loopback.

A Prefect server (UI included; SQLite, or PostgreSQL via ``DRYWALL_STACK_DATABASE_URL``), a
SeaweedFS S3 server with a bucket, the Evidently UI on the monitoring workspace (every drift,
field-prediction and evaluation run lands there through its API), one process worker per pool
(``cpu``, ``gpu``), and the webhook receiver; the pools are created and ``deployments/prefect.yaml``
deployed. Every process runs in its own session with a pid file under ``$DRYWALL_HOME/stack``, so
``down`` stops exactly what ``up`` started; ``stack.env`` there is shell-sourceable. Everything goes
through the command line (``prefect``, ``weed``, ``evidently``, ``drywall``), so this module imports
no Prefect.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployments.s3server import S3Server, free_port_pair
from drywall_core.config import Settings
from drywall_core.errors import DrywallError
from drywall_core.procs import pid_alive

BUCKET = "drywall"
COMPONENTS = ("prefect-server", "s3", "evidently", "worker-cpu", "worker-gpu", "webhook")


class StackError(DrywallError):
    exit_code = 1


def repo_root() -> Path:
    """The checkout holding flows/ and deployments/ (process workers run flows from it)."""
    spec = importlib.util.find_spec("flows")
    if spec is None or spec.origin is None:
        raise StackError("cannot find the flows package: install the project from its checkout (make setup)")
    return Path(spec.origin).resolve().parents[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return 200 <= r.status < 300
    except OSError:
        return False


@dataclass
class Stack:
    settings: Settings

    @property
    def dir(self) -> Path:
        return (Path(self.settings.home) / "stack").resolve()

    @property
    def state_file(self) -> Path:
        return self.dir / "stack.json"

    @property
    def env_file(self) -> Path:
        return self.dir / "stack.env"

    def state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None

    def running(self) -> dict[str, bool]:
        return {c: (pid := self._pid(c)) is not None and pid_alive(pid) for c in COMPONENTS}

    # -- up ------------------------------------------------------------------------------------
    def up(self, timeout: float = 180.0) -> dict[str, Any]:
        alive = self.running()
        if all(alive.values()) and self.state():
            return {**self.state(), "already_running": True}
        if any(alive.values()):
            self.down()  # a half-started stack: clean it up, then start afresh
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        s = self.settings
        for port in (
            s.stack_prefect_port,
            s.stack_s3_port,
            s.stack_s3_port + 10000,
            s.webhook_port,
            s.stack_evidently_port,
        ):
            if port_open(port):
                raise StackError(f"port {port} is already in use on 127.0.0.1 (set DRYWALL_STACK_*_PORT)")
        old = self.state() or {}
        state = {
            "prefect_port": s.stack_prefect_port,
            "s3_port": s.stack_s3_port,
            "webhook_port": s.webhook_port,
            "evidently_port": s.stack_evidently_port,
            "access_key": old.get("access_key", "drywall"),
            "secret_key": old.get("secret_key", secrets.token_hex(16)),
            "webhook_secret": (
                s.webhook_secret.get_secret_value()
                if s.webhook_secret
                else old.get("webhook_secret", secrets.token_hex(24))
            ),
            "repo": str(repo_root()),
        }
        env = self.env(state)
        try:
            self._start_prefect(state, env, timeout)
            self._start_s3(state, timeout)
            self._start_evidently(state, env, timeout)
            self._deploy(env)
            for pool in ("cpu", "gpu"):
                self._spawn(f"worker-{pool}", [self._bin("prefect"), "worker", "start", "--pool", pool], env)
            self._spawn(
                "webhook",
                [self._bin("drywall"), "webhook", "serve", "--host", "127.0.0.1", "--port", str(state["webhook_port"])],
                env,
            )
            self._wait(lambda: _http_ok(f"http://127.0.0.1:{state['webhook_port']}/healthz"), "webhook", timeout)
            self._wait(lambda: self._workers_online(env), "workers", timeout)
        except BaseException:
            self.down()
            raise
        self.state_file.write_text(json.dumps(state, indent=2))
        self.env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.public_env(state).items()))
        return state

    def public_env(self, state: dict[str, Any]) -> dict[str, str]:
        return {
            "PREFECT_API_URL": f"http://127.0.0.1:{state['prefect_port']}/api",
            "DRYWALL_S3_ENDPOINT_URL": f"http://127.0.0.1:{state['s3_port']}",
            "DRYWALL_S3_BUCKET": BUCKET,
            "AWS_ACCESS_KEY_ID": state["access_key"],
            "AWS_SECRET_ACCESS_KEY": state["secret_key"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "DRYWALL_WEBHOOK_URL": f"http://127.0.0.1:{state['webhook_port']}",
            "DRYWALL_EVIDENTLY_URL": f"http://127.0.0.1:{state['evidently_port']}",
            "DRYWALL_WEBHOOK_SECRET": state["webhook_secret"],
        }

    def env(self, state: dict[str, Any]) -> dict[str, str]:
        env = {
            **os.environ,
            **self.public_env(state),
            "PREFECT_HOME": str(self.dir / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DRYWALL_REPO": state["repo"],
            "DRYWALL_HOME": str(Path(self.settings.home).resolve()),
            "PYTHONUNBUFFERED": "1",
        }
        if self.settings.stack_database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.settings.stack_database_url
        return env

    def _bin(self, name: str) -> str:
        return str(Path(sys.executable).parent / name)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> int:
        log = open(self.dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=env.get("DRYWALL_REPO"),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        (self.dir / f"{name}.pid").write_text(str(proc.pid))
        return proc.pid

    def _wait(self, ready: Any, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.5)
        raise StackError(f"{what} did not come up in {timeout:.0f}s; see {self.dir / 'logs'}")

    def _start_prefect(self, state: dict, env: dict, timeout: float) -> None:
        self._spawn(
            "prefect-server",
            [self._bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(state["prefect_port"])],
            env,
        )
        self._wait(lambda: _http_ok(f"http://127.0.0.1:{state['prefect_port']}/api/health"), "prefect server", timeout)

    def _start_s3(self, state: dict, timeout: float) -> None:
        ports = {"s3": state["s3_port"]}
        for svc in ("master", "volume", "filer", "admin", "webdav"):
            p = free_port_pair()
            while p in ports.values() or p in (state["s3_port"] + 10000,):
                p = free_port_pair()
            ports[svc] = p
        server = S3Server(self.dir / "s3-data", BUCKET, state["access_key"], state["secret_key"], ports=ports)
        log = self.dir / "logs" / "s3.log"
        server.start(timeout=timeout, log=log)
        assert server.proc is not None
        (self.dir / "s3.pid").write_text(str(server.proc.pid))

    def _start_evidently(self, state: dict, env: dict, timeout: float) -> None:
        """``evidently ui`` on the monitoring workspace folder (created on first use)."""
        workspace = self.settings.evidently_root
        workspace.mkdir(parents=True, exist_ok=True)
        port = state["evidently_port"]
        cmd = [self._bin("evidently"), "ui", "--workspace", str(workspace), "--host", "127.0.0.1", "--port", str(port)]
        self._spawn("evidently", cmd, env)
        self._wait(lambda: _http_ok(f"http://127.0.0.1:{port}/api/version"), "evidently ui", timeout)

    def _deploy(self, env: dict[str, str]) -> None:
        repo = env["DRYWALL_REPO"]
        for cmd in (
            ["bash", "deployments/create-pools.sh"],
            [self._bin("prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"],
        ):
            r = subprocess.run(
                cmd,
                env={**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"},
                cwd=repo,
                capture_output=True,
                text=True,
                timeout=300,
            )
            with (self.dir / "logs" / "deploy.log").open("a") as log:
                log.write(r.stdout + r.stderr)
            if r.returncode != 0:
                raise StackError(f"{' '.join(cmd[-3:])} failed: {(r.stderr or r.stdout).strip()[-500:]}")

    def _workers_online(self, env: dict[str, str]) -> bool:
        api = env["PREFECT_API_URL"]
        for pool in ("cpu", "gpu"):
            req = urllib.request.Request(
                f"{api}/work_pools/{pool}/workers/filter",
                data=b"{}",
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=3) as r:
                    workers = json.loads(r.read())
            except OSError:
                return False
            if not any(w.get("status") == "ONLINE" for w in workers):
                return False
        return True

    # -- down / status -------------------------------------------------------------------------
    def down(self, timeout: float = 30.0) -> list[str]:
        """Stop exactly the processes ``up`` started (pid files), then wait for their ports to close."""
        stopped = []
        for name in reversed(COMPONENTS):
            pid = self._pid(name)
            if pid is not None and pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
                stopped.append(name)
        deadline = time.monotonic() + timeout
        for name in stopped:
            pid = self._pid(name)
            while pid and pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if pid and pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        for name in COMPONENTS:
            (self.dir / f"{name}.pid").unlink(missing_ok=True)
        state = self.state()
        if state:
            ports = [state["prefect_port"], state["s3_port"], state["webhook_port"], state.get("evidently_port")]
            ports = [p for p in ports if p]
            while any(port_open(p) for p in ports) and time.monotonic() < deadline:
                time.sleep(0.2)
        return stopped

    def status(self) -> list[dict[str, Any]]:
        state = self.state() or {}
        checks = {
            "prefect-server": (state.get("prefect_port"), lambda p: _http_ok(f"http://127.0.0.1:{p}/api/health")),
            "s3": (state.get("s3_port"), lambda p: port_open(p)),
            "webhook": (state.get("webhook_port"), lambda p: _http_ok(f"http://127.0.0.1:{p}/healthz")),
            "evidently": (state.get("evidently_port"), lambda p: _http_ok(f"http://127.0.0.1:{p}/api/version")),
        }
        rows = []
        for name in COMPONENTS:
            pid = self._pid(name)
            alive = pid is not None and pid_alive(pid)
            port, check = checks.get(name, (None, None))
            rows.append(
                {
                    "component": name,
                    "pid": pid,
                    "running": alive,
                    "port": port,
                    "answers": bool(alive and port and check and check(port)) if port else alive,
                }
            )
        return rows
