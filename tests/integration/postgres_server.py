"""A throwaway PostgreSQL server (Debian's ``postgresql`` package) on a free loopback port.

Its own data folder, trust authentication on loopback only, removed on stop. PostgreSQL refuses to
run as root, so as root it runs as the ``postgres`` system user the package creates.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.integration.prefect_server import free_port


def postgres_bin() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``: on PATH, or Debian's /usr/lib/postgresql/<major>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


class PostgresServer:
    def __init__(self, database: str = "prefect", user: str = "drywall") -> None:
        self.bin = postgres_bin()
        if self.bin is None:
            raise FileNotFoundError("initdb not found: install Debian's postgresql package (make setup does)")
        self.database, self.user, self.port = database, user, free_port()
        self.dir: Path | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL for Prefect's PREFECT_API_DATABASE_CONNECTION_URL."""
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stdout[-2000:]} {r.stderr[-2000:]}")

    def start(self) -> PostgresServer:
        # not under pytest's 0700 tmp folders: the postgres user must reach its data folder
        self.dir = Path(tempfile.mkdtemp(prefix="drywall-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        self._run("initdb", "-D", str(data), "-U", self.user, "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}"
        self._run("pg_ctl", "-D", str(data), "-o", options, "-l", str(self.dir / "server.log"), "-w", "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database)
        return self

    def stop(self) -> None:
        if self.dir is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
