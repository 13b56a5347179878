"""The installed ``drywall`` command: the domain commands of :mod:`drywall_core.cli` plus the ones
that wire in orchestration -- ``demo`` (the retrain flow), ``webhook serve`` (Prefect events) and
``stack`` (servers and workers) -- which live here, beside the flows and deployments they call, so
that nothing in ``drywall_core`` imports Prefect, flows, tasks or deployments.
"""

from __future__ import annotations

from typing import Annotated

import typer

from drywall_core.base.config import get_settings
from drywall_core.base.errors import CheckFailed, InputError
from drywall_core.cli import app, run

webhook_app = typer.Typer(no_args_is_help=True, help="Signed webhook receiver (Roboflow, S3 field images).")
app.add_typer(webhook_app, name="webhook")


@webhook_app.command("serve")
def webhook_serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default: settings, 8077).")] = None,
) -> None:
    """Serve POST /hooks/roboflow, POST /hooks/field-images and GET /healthz (needs PREFECT_API_URL)."""
    import uvicorn

    from deployments.webhook import app_from_environment

    s = get_settings()
    try:
        application = app_from_environment()
    except ValueError as exc:
        raise InputError(str(exc)) from None
    uvicorn.run(application, host=host or s.webhook_host, port=port or s.webhook_port, log_level="info")


alerts_app = typer.Typer(no_args_is_help=True, help="Alert automations on the Prefect server (no Cloud needed).")
app.add_typer(alerts_app, name="alerts")


@alerts_app.command("setup")
def alerts_setup(
    url: Annotated[
        str | None, typer.Option(help="Slack-compatible incoming webhook (default: DRYWALL_ALERT_WEBHOOK_URL).")
    ] = None,
) -> None:
    """Create or update the zombie-run automation, the notification block and the alerts (needs PREFECT_API_URL)."""
    from deployments.alerts import ensure_alerts, ensure_zombie_automation

    s = get_settings()
    target = url or (s.alert_webhook_url.get_secret_value() if s.alert_webhook_url else None)
    if target and not target.startswith(("http://", "https://")):
        raise InputError(f"alert webhook URL must be http(s)://..., not '{target[:40]}'")
    typer.echo(f"automation ready: {ensure_zombie_automation()}")
    if not target:
        typer.echo("alerts: no webhook URL (DRYWALL_ALERT_WEBHOOK_URL); alert automations not created")
        return
    for name in ensure_alerts(target):
        typer.echo(f"alert automation ready: {name}")


stack_app = typer.Typer(no_args_is_help=True, help="The local production-like stack on loopback.")
app.add_typer(stack_app, name="stack")


@stack_app.command("up")
def stack_up() -> None:
    """Start PostgreSQL, Prefect server + UI, S3, Evidently UI, cpu/gpu workers, the webhook receiver and the
    prediction service; deploy."""
    from deployments.stack import Stack

    stack = Stack(get_settings(), say=lambda line: typer.echo(line, err=True))
    state = stack.up()
    env = stack.public_env(state)
    verb = "already running" if state.get("already_running") else "up"
    typer.echo(
        f"stack {verb}: Prefect UI http://127.0.0.1:{state['prefect_port']}  S3 {env['DRYWALL_S3_ENDPOINT_URL']}"
        f"  webhook {env['DRYWALL_WEBHOOK_URL']}  Evidently UI {env['DRYWALL_EVIDENTLY_URL']}"
        f"  predictions {env['DRYWALL_SERVE_URL']}"
    )
    typer.echo(f"environment (credentials, mode 0600): source {stack.env_file}")


@stack_app.command("down")
def stack_down() -> None:
    """Stop exactly what `stack up` started and free its ports."""
    from deployments.stack import Stack

    stopped = Stack(get_settings()).down()
    typer.echo(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack_app.command("status")
def stack_status() -> None:
    """What runs where, and whether every active schedule has an upcoming run (exit 1 naming what is not)."""
    from deployments.stack import Stack

    status = Stack(get_settings()).status()
    for r in status.components:
        state = "up" if r.answers else ("running, not answering" if r.running else "down")
        where = f"127.0.0.1:{r.port}" if r.port else ""
        typer.echo(f"{r.name:<15} {state:<24} pid {r.pid or '-':<8} {where}")
    for c in status.schedules:
        typer.echo(f"schedule {c.deployment:<36} {'ok' if c.ok else 'NO RUN'}: {c.reason}")
    if not status.ok:
        for problem in status.problems:
            typer.echo(f"stack: {problem}", err=True)
        raise CheckFailed(f"{len(status.problems)} problem(s) in the stack")


@app.command()
def demo() -> None:
    """Run the retrain flow end to end on embedded defaults (synthetic data, tiny model, local registry)."""
    from flows.demo import run_demo

    run_demo(get_settings())


def main() -> None:
    """Console entry point (``drywall``)."""
    run(app)


if __name__ == "__main__":
    main()
