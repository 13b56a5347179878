"""`drywall stack up|down|status`: a production-like stack on one machine, on loopback, that lets no one in.

PostgreSQL (Prefect's database; SQLite only where the package is missing, or by choice), a Prefect
server (UI included) whose API demands basic auth, a hardened SeaweedFS S3 server with a bucket
(only the S3 gateway answers, and only with the S3 keys), the Evidently UI behind a secret on the
monitoring workspace, one process worker per pool (``cpu``, ``gpu``) with flow-run heartbeats, and
the webhook receiver (HMAC-signed deliveries); the pools and alert automations are created and
``deployments/prefect.yaml`` deployed. Every process runs in its own session with a pid file under
``$DRYWALL_HOME/stack``, so ``down`` stops exactly what ``up`` started. The secrets (made once,
kept across restarts) are in ``stack.json`` and the shell-sourceable ``stack.env``, both mode 0600
in a 0700 folder. Everything goes through the command line (``prefect``, ``weed``, ``postgres``,
``drywall``), so this module imports no Prefect. docs/OPERATIONS.md has the table of every service,
its address and how it authenticates.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployments.postgres import PostgresServer, data_folder_for, postgres_bin
from deployments.s3server import S3Server, free_port_pair
from deployments.schedules import ScheduleCheck, check_schedules, wait_for_schedules
from drywall_core.base.config import Settings
from drywall_core.base.errors import DrywallError
from drywall_core.base.fsutil import atomic_write_text
from drywall_core.base.procs import pid_alive
from drywall_core.stages.context import auth_headers

BUCKET = "drywall"
COMPONENTS = ("postgres", "prefect-server", "s3", "evidently", "worker-cpu", "worker-gpu", "webhook", "serve")
HEARTBEAT_S = 30  # flow-run heartbeats from every worker's runs (the zombie automation waits 3 of them)
CLIENT_RETRIES = 7  # Prefect client backoff 2, 4, ... 128 s: API outages of a few minutes are waited out
STOP_SIGNAL = {"postgres": signal.SIGINT}  # PostgreSQL's fast shutdown; the rest take SIGTERM


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


def _http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2) as r:
            return 200 <= r.status < 300
    except OSError:
        return False


def _write_secret(path: Path, text: str) -> None:
    """A file of secrets: mode 0600 from its first byte, in a folder only its owner enters."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    atomic_write_text(path, text, file_mode=0o600)


@dataclass(frozen=True)
class Component:
    """One row of `drywall stack status`."""

    name: str
    pid: int | None
    running: bool
    port: int | None
    answers: bool


@dataclass
class Status:
    components: list[Component]
    schedules: list[ScheduleCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Stack:
    settings: Settings
    say: Callable[[str], None] = lambda _msg: None  # progress lines for the command line

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

    def components(self, state: dict[str, Any] | None = None) -> tuple[str, ...]:
        state = state if state is not None else self.state() or {}
        own_postgres = state.get("database") == "postgres"
        return tuple(c for c in COMPONENTS if c != "postgres" or own_postgres)

    def running(self) -> dict[str, bool]:
        return {c: (pid := self._pid(c)) is not None and pid_alive(pid) for c in COMPONENTS}

    # -- up ------------------------------------------------------------------------------------
    def _database(self) -> str:
        s = self.settings
        if s.stack_database_url:
            return "external"
        if s.stack_database == "postgres" and postgres_bin() is not None:
            return "postgres"
        if s.stack_database == "postgres":
            self.say(
                "warning: PostgreSQL is not installed (make setup installs it): Prefect runs on SQLite, "
                "which locks under load"
            )
        return "sqlite"

    def _new_state(self) -> dict[str, Any]:
        """Ports from the settings; secrets made once and kept (a restart keeps every client working)."""
        s, old = self.settings, self.state() or {}
        kept = {
            k: old[k]
            for k in ("secret_key", "prefect_auth", "evidently_secret", "postgres_password", "serve_key")
            if k in old
        }
        return {
            "database": self._database(),
            "prefect_port": s.stack_prefect_port,
            "s3_port": s.stack_s3_port,
            "webhook_port": s.webhook_port,
            "evidently_port": s.stack_evidently_port,
            "serve_port": s.serve.port,
            "postgres_port": s.stack_postgres_port,
            "access_key": old.get("access_key", "drywall"),
            "secret_key": secrets.token_hex(16),
            "prefect_auth": f"drywall:{secrets.token_urlsafe(24)}",
            "evidently_secret": secrets.token_urlsafe(24),
            "postgres_password": secrets.token_urlsafe(18),
            "serve_key": "dwk_" + secrets.token_urlsafe(32),
            "webhook_secret": (
                s.webhook_secret.get_secret_value()
                if s.webhook_secret
                else old.get("webhook_secret", secrets.token_hex(24))
            ),
            "repo": str(repo_root()),
            **kept,
        }

    def up(self, timeout: float = 180.0) -> dict[str, Any]:
        alive = self.running()
        state = self.state()
        if state and all(alive[c] for c in self.components(state)):
            return {**state, "already_running": True}
        if any(alive.values()):
            self.say("a half-started stack: stopping it first")
            self.down()
        state = self._new_state()
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        (self.dir / "logs").mkdir(mode=0o700, exist_ok=True)
        ports = [state[k] for k in ("prefect_port", "s3_port", "webhook_port", "evidently_port", "serve_port")]
        ports += [state["s3_port"] + 10000] + ([state["postgres_port"]] if state["database"] == "postgres" else [])
        for port in ports:
            if port_open(port):
                raise StackError(f"port {port} is already in use on 127.0.0.1 (set DRYWALL_STACK_*_PORT)")
        # the secrets first: a stack that fails half-way keeps the ones its data was made with
        _write_secret(self.state_file, json.dumps(state, indent=2))
        env = self.env(state)
        try:
            steps: list[tuple[str, Callable[[], None]]] = [
                ("PostgreSQL", lambda: self._start_postgres(state, timeout)),
                ("Prefect server", lambda: self._start_prefect(state, env, timeout)),
                ("S3 (SeaweedFS, hardened)", lambda: self._start_s3(state, timeout)),
                ("Evidently UI", lambda: self._start_evidently(state, env, timeout)),
                ("work pools, alerts and deployments", lambda: self._deploy(env)),
                ("workers, webhook receiver and prediction service", lambda: self._start_workers(state, env, timeout)),
                ("schedules produce upcoming runs", lambda: self._check_schedules(state)),
            ]
            if state["database"] != "postgres":
                steps = steps[1:]
            for n, (what, step) in enumerate(steps, 1):
                t0 = time.monotonic()
                self.say(f"[{n}/{len(steps)}] {what} ...")
                step()
                self.say(f"[{n}/{len(steps)}] {what}: up in {time.monotonic() - t0:.0f}s")
        except BaseException:
            self.down()
            raise
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.public_env(state).items())
        _write_secret(self.env_file, exports)
        return state

    def public_env(self, state: dict[str, Any]) -> dict[str, str]:
        """What a client of the stack needs (stack.env): addresses and credentials, no server secrets."""
        return {
            "PREFECT_API_URL": f"http://127.0.0.1:{state['prefect_port']}/api",
            "PREFECT_API_AUTH_STRING": state["prefect_auth"],
            "DRYWALL_S3_ENDPOINT_URL": f"http://127.0.0.1:{state['s3_port']}",
            "DRYWALL_S3_BUCKET": BUCKET,
            "AWS_ACCESS_KEY_ID": state["access_key"],
            "AWS_SECRET_ACCESS_KEY": state["secret_key"],
            "AWS_DEFAULT_REGION": "us-east-1",
            "DRYWALL_WEBHOOK_URL": f"http://127.0.0.1:{state['webhook_port']}",
            "DRYWALL_EVIDENTLY_URL": f"http://127.0.0.1:{state['evidently_port']}",
            "DRYWALL_EVIDENTLY_SECRET": state["evidently_secret"],
            "DRYWALL_WEBHOOK_SECRET": state["webhook_secret"],
            "DRYWALL_SERVE_URL": f"http://127.0.0.1:{state['serve_port']}",
            "DRYWALL_API_KEY": state["serve_key"],
        }

    def env(self, state: dict[str, Any]) -> dict[str, str]:
        """The environment of the stack's clients: workers, the receiver, deploy steps."""
        env = {
            **os.environ,
            **self.public_env(state),
            "PREFECT_HOME": str(self.dir / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),
            "PREFECT_CLIENT_MAX_RETRIES": str(CLIENT_RETRIES),
            "DRYWALL_REPO": state["repo"],
            "DRYWALL_HOME": str(Path(self.settings.home).resolve()),
            "PYTHONUNBUFFERED": "1",
        }
        for server_only in ("PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_DATABASE_CONNECTION_URL"):
            env.pop(server_only, None)
        return env

    def _server_env(self, state: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
        server = {**env, "PREFECT_SERVER_API_AUTH_STRING": state["prefect_auth"]}
        if state["database"] == "external":
            server["PREFECT_API_DATABASE_CONNECTION_URL"] = self.settings.stack_database_url or ""
        elif state["database"] == "postgres":
            server["PREFECT_API_DATABASE_CONNECTION_URL"] = self._postgres(state).url
        return server

    def _bin(self, name: str) -> str:
        return str(Path(sys.executable).parent / name)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None, cwd: str | None = None) -> int:
        log = open(self.dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd or (env or {}).get("DRYWALL_REPO"),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        (self.dir / f"{name}.pid").write_text(str(proc.pid))
        return proc.pid

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.5)
        raise StackError(f"{what} did not come up in {timeout:.0f}s; see {self.dir / 'logs'}")

    def _postgres(self, state: dict[str, Any]) -> PostgresServer:
        return PostgresServer(data_folder_for(self.dir), state["postgres_port"], state["postgres_password"])

    def _start_postgres(self, state: dict, timeout: float) -> None:
        pg = self._postgres(state)
        pg.prepare()
        self._spawn("postgres", pg.command(), None, cwd=str(pg.root))
        pg.wait_ready(timeout)
        pg.ensure_database()

    def _start_prefect(self, state: dict, env: dict, timeout: float) -> None:
        self._spawn(
            "prefect-server",
            [self._bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(state["prefect_port"])],
            self._server_env(state, env),
        )
        self._wait(lambda: _http_ok(f"http://127.0.0.1:{state['prefect_port']}/api/health"), "prefect server", timeout)

    def _start_s3(self, state: dict, timeout: float) -> None:
        ports = {"s3": state["s3_port"]}
        for svc in ("master", "volume", "filer", "admin"):
            p = free_port_pair()
            while p in ports.values() or p in (state["s3_port"] + 10000,):
                p = free_port_pair()
            ports[svc] = p
        server = S3Server(self.dir / "s3-data", BUCKET, state["access_key"], state["secret_key"], ports=ports)
        server.start(timeout=timeout, log=self.dir / "logs" / "s3.log")
        assert server.proc is not None
        (self.dir / "s3.pid").write_text(str(server.proc.pid))

    def _start_evidently(self, state: dict, env: dict, timeout: float) -> None:
        """The Evidently UI on the monitoring workspace folder, behind the stack's secret."""
        workspace = self.settings.evidently_root
        workspace.mkdir(parents=True, exist_ok=True)
        port = state["evidently_port"]
        cmd = [sys.executable, "-m", "deployments.evidently_ui", "--workspace", str(workspace), "--port", str(port)]
        self._spawn("evidently", cmd, env)
        secret = {"evidently-secret": state["evidently_secret"]}
        self._wait(lambda: _http_ok(f"http://127.0.0.1:{port}/api/version", secret), "evidently ui", timeout)

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

    def _start_workers(self, state: dict, env: dict, timeout: float) -> None:
        for pool in ("cpu", "gpu"):
            self._spawn(f"worker-{pool}", [self._bin("prefect"), "worker", "start", "--pool", pool], env)
        port = str(state["webhook_port"])
        self._spawn("webhook", [self._bin("drywall"), "webhook", "serve", "--host", "127.0.0.1", "--port", port], env)
        self._wait(lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"), "webhook", timeout)
        self._start_serve(state, env, timeout)
        self._wait(lambda: self._workers_online(state), "workers", timeout)

    def _start_serve(self, state: dict, env: dict, timeout: float) -> None:
        """The prediction service, its key stored hashed beside the stack's state (the client's key
        is in stack.env); alive at once, ready once a champion is published and warmed."""
        from drywall_core.serve.keys import hash_key

        keys = self.dir / "api-keys.txt"
        _write_secret(keys, hash_key(state["serve_key"]) + "\n")
        port = str(state["serve_port"])
        serve_env = {**env, "DRYWALL_SERVE__API_KEYS_FILE": str(keys)}
        self._spawn("serve", [self._bin("drywall"), "serve", "--host", "127.0.0.1", "--port", port], serve_env)
        self._wait(lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"), "prediction service", timeout)

    def _check_schedules(self, state: dict[str, Any]) -> None:
        api = f"http://127.0.0.1:{state['prefect_port']}/api"
        missing = [c for c in wait_for_schedules(api, state["prefect_auth"], timeout=180) if not c.ok]
        if missing:
            raise StackError("; ".join(f"schedule {c.deployment}: {c.reason}" for c in missing))

    def _api(self, state: dict[str, Any], path: str, body: dict) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{state['prefect_port']}/api/{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", **auth_headers(state["prefect_auth"])},
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def _workers_online(self, state: dict[str, Any]) -> bool:
        for pool in ("cpu", "gpu"):
            try:
                workers = self._api(state, f"work_pools/{pool}/workers/filter", {})
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
                    os.killpg(pid, STOP_SIGNAL.get(name, signal.SIGTERM))
                stopped.append(name)
                if name == "postgres":  # last: wait for it, so its data folder is clean for the next up
                    self._wait_gone(pid, time.monotonic() + timeout)
        deadline = time.monotonic() + timeout
        for name in stopped:
            pid = self._pid(name)
            if pid:
                self._wait_gone(pid, deadline)
        for name in COMPONENTS:
            (self.dir / f"{name}.pid").unlink(missing_ok=True)
        state = self.state()
        if state:
            keys = ("prefect_port", "s3_port", "webhook_port", "evidently_port", "serve_port", "postgres_port")
            ports = [state[k] for k in keys if state.get(k)]
            while any(port_open(p) for p in ports) and time.monotonic() < deadline:
                time.sleep(0.2)
        return stopped

    @staticmethod
    def _wait_gone(pid: int, deadline: float) -> None:
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def status(self) -> Status:
        """Every process alive and answering (with the stack's credentials), and every active
        schedule with an upcoming run: a nightly that will never run is a stack that is down."""
        state = self.state() or {}
        if not state:
            return Status([], problems=[f"no stack here ({self.state_file} is missing): run `drywall stack up`"])
        evidently = {"evidently-secret": state.get("evidently_secret", "")}
        version = "http://127.0.0.1:{}/api/version"
        checks: dict[str, tuple[int | None, Callable[[int], bool]]] = {
            "postgres": (state.get("postgres_port"), port_open),
            "prefect-server": (state.get("prefect_port"), lambda p: _http_ok(f"http://127.0.0.1:{p}/api/health")),
            "s3": (state.get("s3_port"), port_open),
            "webhook": (state.get("webhook_port"), lambda p: _http_ok(f"http://127.0.0.1:{p}/healthz")),
            "serve": (state.get("serve_port"), lambda p: _http_ok(f"http://127.0.0.1:{p}/healthz")),
            "evidently": (state.get("evidently_port"), lambda p: _http_ok(version.format(p), evidently)),
        }
        rows, problems = [], []
        for name in self.components(state):
            pid = self._pid(name)
            alive = pid is not None and pid_alive(pid)
            port, check = checks.get(name, (None, None))
            answers = bool(alive and (check(port) if port and check else True))
            rows.append(Component(name, pid, alive, port, answers))
            if not answers:
                problems.append(f"{name}: {'running but not answering' if alive else 'not running'}")
        schedules: list[ScheduleCheck] = []
        if not problems:
            try:
                schedules = check_schedules(f"http://127.0.0.1:{state['prefect_port']}/api", state.get("prefect_auth"))
            except Exception as exc:  # noqa: BLE001 - any failure to ask is itself the finding
                problems.append(f"schedules: cannot read them from the Prefect API ({exc})")
            if self._workers_online(state) is False:
                problems.append("workers: not every pool (cpu, gpu) has an ONLINE worker")
            problems += [f"schedule {c.deployment}: {c.reason}" for c in schedules if not c.ok]
        return Status(rows, schedules, problems)

    def wait_for_schedules(self, timeout: float = 90.0) -> list[ScheduleCheck]:
        state = self.state() or {}
        return wait_for_schedules(f"http://127.0.0.1:{state['prefect_port']}/api", state.get("prefect_auth"), timeout)
