"""What answers without credentials? Probes for every TCP port a set of processes listens on.

A port "answers without credentials" when, with no key, password, certificate or signature:
- a plain HTTP request gets a 2xx answer (each probe below is tried), or
- a TLS handshake without a client certificate completes and such a request then gets a 2xx, or
- an HTTP/2 prior-knowledge preface gets a SETTINGS frame back (an open gRPC server), or
- a PostgreSQL startup message gets AuthenticationOk.
Everything else (401/403, a TLS alert for the missing certificate, a password request) is closed.
"""

from __future__ import annotations

import re
import socket
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

PROBES = (
    ("GET", "/"),
    ("GET", "/api/health"),
    ("GET", "/api/ready"),
    ("GET", "/healthz"),
    ("GET", "/api/version"),
    ("GET", "/api/projects"),
    ("POST", "/api/flows/filter"),
    ("POST", "/api/deployments/filter"),
    ("POST", "/api/events"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
    ("POST", "/hooks/roboflow"),
    ("POST", "/hooks/field-images"),
    ("GET", "/drywall/"),
    ("PUT", "/drywall/probe.txt"),
    ("GET", "/dir/assign"),
    ("GET", "/dir/status"),
    ("GET", "/buckets/drywall/"),
    ("PUT", "/buckets/drywall/probe.txt"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/models"),
    ("GET", "/v1/gallery"),
    ("POST", "/v1/segment"),
)


@dataclass(frozen=True)
class Exposure:
    port: int
    process: str
    open: tuple[str, ...]  # what answered without credentials, e.g. "GET /api/health", "grpc", "postgres"


def listening_ports(pids: list[int]) -> dict[int, str]:
    """TCP ports in LISTEN state held by these processes or any of their descendants -> process name."""
    found: dict[int, str] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in family:
            try:
                conns = proc.net_connections(kind="tcp")
                name = " ".join(proc.cmdline()[:3])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            for c in conns:
                if c.status == psutil.CONN_LISTEN:
                    found[c.laddr.port] = name
    return found


def _http_open(port: int, tls: bool) -> list[str]:
    scheme = "https" if tls else "http"
    opened = []
    with httpx.Client(base_url=f"{scheme}://127.0.0.1:{port}", verify=False, timeout=3) as client:
        for method, path in PROBES:
            try:
                r = client.request(method, path, content=b"{}", headers={"Content-Type": "application/json"})
            except httpx.HTTPError:
                if tls:
                    return opened  # the handshake is refused: nothing else will get through
                continue
            if 200 <= r.status_code < 300:
                opened.append(f"{method} {path}")
    return opened


def _tls_without_client_cert(port: int) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw, ctx.wrap_socket(raw) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return bool(s.recv(16))  # TLS 1.3 reports a missing client certificate at the first read
    except (OSError, ssl.SSLError):
        return False


def _h2c_settings(port: int) -> bool:
    """An HTTP/2 server without TLS (gRPC in the clear) answers the preface with a SETTINGS frame."""
    head = _exchange(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", 9)
    return len(head) == 9 and head[3] == 0x04


def _exchange(port: int, message: bytes, n: int) -> bytes:
    """Send one message, read up to ``n`` bytes of the answer (b"" when the port says nothing)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
            s.sendall(message)
            return s.recv(n)
    except OSError:
        return b""


def _postgres_trusts(port: int) -> bool:
    """A PostgreSQL server that lets a client in without a password answers AuthenticationOk (R, 0)."""
    params = b"user\x00postgres\x00database\x00postgres\x00\x00"
    head = _exchange(port, struct.pack("!ii", 8 + len(params), 196608) + params, 9)
    return len(head) == 9 and head[:1] == b"R" and struct.unpack("!i", head[5:9])[0] == 0


def _is_postgres(port: int) -> bool:
    """PostgreSQL answers an SSLRequest with one byte, S or N."""
    return _exchange(port, struct.pack("!ii", 8, 80877103), 1) in (b"S", b"N")


def probe(port: int) -> list[str]:
    """Everything the port lets in without credentials."""
    if _is_postgres(port):
        return ["postgres"] if _postgres_trusts(port) else []
    opened = _http_open(port, tls=False)
    if _tls_without_client_cert(port):
        opened += [f"TLS {p}" for p in _http_open(port, tls=True)] or ["TLS without a client certificate"]
    if _h2c_settings(port):
        opened.append("grpc")
    return opened


def exposures(pids: list[int]) -> list[Exposure]:
    return [Exposure(port, name, tuple(probe(port))) for port, name in sorted(listening_ports(pids).items())]


def service_table(operations_md: Path) -> dict[str, set[str]]:
    """docs/OPERATIONS.md's service table: stack component -> what answers there without credentials."""
    text = operations_md.read_text()
    block = text.split("<!-- services:start -->")[1].split("<!-- services:end -->")[0]
    table: dict[str, set[str]] = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or cells[0].startswith("---") or cells[0] == "service":
            continue
        components = re.findall(r"`([a-z0-9-]+)`", cells[1])
        opened = set(re.findall(r"`((?:GET|POST|PUT) /[^`]*)`", cells[-1]))
        for component in components:  # a component with several rows (SeaweedFS) allows their union
            table.setdefault(component, set()).update(opened)
    return table
