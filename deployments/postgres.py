"""A PostgreSQL server (Debian's ``postgresql`` package) on loopback: the Prefect database of the stack.

Prefect on SQLite serialises every write through one file lock; with a scheduler, workers, event
triggers and automations writing at once it logs ``database is locked`` and loses scheduler loops.
So ``drywall stack up`` runs Prefect on PostgreSQL whenever the package is there (``make setup``
installs it). The server has its own data folder, listens on 127.0.0.1 only and demands a password
(SCRAM) on TCP; its unix socket sits in a folder only its owner can enter. PostgreSQL refuses to run
as root, so as root it runs as the ``postgres`` system user the package creates.
"""

from __future__ import annotations

import glob
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def postgres_bin() -> Path | None:
    """The folder of ``initdb``/``postgres``: on PATH, or Debian's /usr/lib/postgresql/<major>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reachable_by_postgres(path: Path) -> bool:
    """Can the ``postgres`` user enter every folder above ``path``? (root's home usually is 0700.)"""
    r = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(path)], capture_output=True)
    return r.returncode == 0


def data_folder_for(stack_dir: Path) -> Path:
    """Where the stack keeps its database: under the stack folder, unless ``postgres`` cannot reach it."""
    wanted = stack_dir / "postgres"
    if os.geteuid() != 0 or _reachable_by_postgres(stack_dir):
        return wanted
    digest = hashlib.sha256(str(stack_dir.resolve()).encode()).hexdigest()[:16]
    return Path("/var/lib/drywall-stack") / digest


class PostgresServer:
    """One server; ``data_dir=None`` makes a throwaway one (removed by :meth:`stop`)."""

    def __init__(
        self,
        data_dir: Path | None = None,
        port: int | None = None,
        password: str | None = None,
        database: str = "prefect",
        user: str = "drywall",
    ) -> None:
        self.bin = postgres_bin()
        if self.bin is None:
            raise FileNotFoundError("initdb not found: install Debian's postgresql package (make setup does)")
        self.throwaway = data_dir is None
        self.root = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="drywall-pg-"))
        self.port = port or _free_port()
        self.password = password or secrets.token_urlsafe(18)
        self.database, self.user = database, user
        self.proc: subprocess.Popen | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def url(self) -> str:
        """SQLAlchemy URL for Prefect's ``PREFECT_API_DATABASE_CONNECTION_URL``."""
        return f"postgresql+asyncpg://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = self._as_owner([str(self.bin / args[0]), *args[1:]])
        env = {**os.environ, "PGPASSWORD": self.password}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stdout[-2000:]} {r.stderr[-2000:]}")
        return r

    def prepare(self) -> None:
        for folder in (self.root, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
            if os.geteuid() == 0:
                shutil.chown(folder, "postgres", "postgres")
        if (self.data / "PG_VERSION").exists():
            return
        pwfile = self.root / "initdb.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                self.user,
                "--pwfile",
                str(pwfile),
                "--auth-host=scram-sha-256",
                "--auth-local=scram-sha-256",
                "-E",
                "UTF8",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def command(self) -> list[str]:
        """The server in the foreground (so a supervisor's pid is the server's)."""
        options = ["-p", str(self.port), "-c", "listen_addresses=127.0.0.1", "-k", str(self.socket_dir)]
        return self._as_owner([str(self.bin / "postgres"), "-D", str(self.data), *options])

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}; see {self.root / 'server.log'}")
            r = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True
            )
            if r.returncode == 0:
                return
            time.sleep(0.3)
        raise RuntimeError(f"postgres did not accept connections in {timeout:.0f}s; see {self.root / 'server.log'}")

    def ensure_database(self) -> None:
        psql = ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", "postgres", "-tAc"]
        found = self._run(*psql, f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'").stdout
        if found.strip() != "1":
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database)

    def start(self, timeout: float = 60.0, log: Path | None = None) -> PostgresServer:
        self.prepare()
        out = open(log or self.root / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.wait_ready(timeout)
        self.ensure_database()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 2)  # SIGINT: PostgreSQL's fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)
        if self.throwaway:
            shutil.rmtree(self.root, ignore_errors=True)
