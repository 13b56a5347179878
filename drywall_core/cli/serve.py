"""Service commands: ``serve`` (the prediction service) and ``api-key`` (keys for it)."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer

from drywall_core.base.errors import InputError
from drywall_core.cli.app import app, context

key_app = typer.Typer(no_args_is_help=True, help="API keys of the prediction service (stored hashed).")
app.add_typer(key_app, name="api-key")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: DRYWALL_SERVE__HOST, 127.0.0.1).")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port (default: DRYWALL_SERVE__PORT, 8080).")
    ] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="Serve without API keys (a laptop demo only).")
    ] = False,
) -> None:
    """Serve the registry's champion over HTTP (POST /v1/segment, the page at /), following promotions."""
    import uvicorn

    from drywall_core.serve.app import create_app
    from drywall_core.serve.service import build_service

    ctx = context()
    service = build_service(ctx, insecure_no_auth)
    cfg = ctx.settings.serve
    uvicorn.run(create_app(service), host=host or cfg.host, port=port or cfg.port, log_level="info")


@key_app.command("new")
def api_key_new(
    file: Annotated[
        Path | None, typer.Option(help="Key file to add the key's hash to (default: DRYWALL_SERVE__API_KEYS_FILE).")
    ] = None,
) -> None:
    """Make a key, add its sha256 to the key file (created 0600) and print the key once."""
    from drywall_core.serve.keys import add_key

    target = file or context().settings.serve.api_keys_file
    if target is None:
        raise InputError("no key file: pass --file or set DRYWALL_SERVE__API_KEYS_FILE")
    key = "dwk_" + secrets.token_urlsafe(32)
    add_key(Path(target), key)
    typer.echo(key)
    typer.echo(f"its hash is in {target}; the key is shown only now", err=True)


@key_app.command("hash")
def api_key_hash(key: Annotated[str, typer.Argument(help="A key, or - to read it from stdin.")]) -> None:
    """Print the key-file line of a key (``sha256:<hex>``)."""
    from drywall_core.serve.keys import hash_key

    typer.echo(hash_key(sys.stdin.read().strip() if key == "-" else key))
