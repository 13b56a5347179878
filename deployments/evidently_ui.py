"""The Evidently UI with authentication in front of every request.

``evidently ui`` has no authentication for reads, and its optional ``--secret`` guards only some
writes: anyone who reaches its port can read every project and, without the secret, create or
delete projects. This runs the same Evidently app (same workspace folder, same API) inside an ASGI
gate that refuses every HTTP and websocket request without the stack's secret, given either as
Evidently's own client header (``evidently-secret: <secret>``, which ``RemoteWorkspace(url,
secret=...)`` sends) or as HTTP basic auth with the secret as password (what a browser sends after
its login prompt). The secret comes from ``DRYWALL_EVIDENTLY_SECRET`` in the environment, never
from the command line (where ``ps`` shows it)::

    DRYWALL_EVIDENTLY_SECRET=... python -m deployments.evidently_ui --workspace W --port 8085
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

SECRET_ENV = "DRYWALL_EVIDENTLY_SECRET"
SECRET_HEADER = b"evidently-secret"

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


def _authorised(headers: list[tuple[bytes, bytes]], secret: bytes) -> bool:
    for name, value in headers:
        name = name.lower()
        if name == SECRET_HEADER and hmac.compare_digest(value, secret):
            return True
        if name == b"authorization" and value[:6].lower() == b"basic ":
            try:
                _, _, password = base64.b64decode(value[6:].strip(), validate=True).partition(b":")
            except (binascii.Error, ValueError):
                continue
            if hmac.compare_digest(password, secret):
                return True
    return False


def require_secret(app: ASGIApp, secret: str) -> ASGIApp:
    """Wrap ``app``: requests without the secret get 401 (websockets are closed before accepting)."""
    if not secret:
        raise ValueError(f"{SECRET_ENV} is empty: the Evidently UI never runs without authentication")
    key = secret.encode()

    async def gate(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or _authorised(scope.get("headers", []), key):
            await app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = b'{"error": "authentication required"}'
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Basic realm="drywall-qa evidently", charset="UTF-8"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return gate


def create_app(workspace: str, secret: str) -> ASGIApp:
    from evidently.ui.service.app import create_app as evidently_app
    from evidently.ui.service.app import get_config

    return require_secret(evidently_app(get_config(workspace=workspace)), secret)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8085)
    args = parser.parse_args(argv)
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        print(f"evidently ui: {SECRET_ENV} is not set; refusing to serve without authentication", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(create_app(args.workspace, secret), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
