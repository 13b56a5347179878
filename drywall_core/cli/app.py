"""The ``drywall`` application: the typer app, the stage context a command gets, and the one place
every way out of a command becomes an exit code and a line.

Exit codes: 0 success; 1 the input was read but failed a check; 2 bad usage or unreadable input;
130 interrupted. Errors go to stderr, one line per problem, never a bare traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import pydantic
import typer

from drywall_core.base.config import get_settings
from drywall_core.base.errors import DrywallError, InputError, Interrupted, OutputError
from drywall_core.base.fsutil import DISK_FULL
from drywall_core.stages.context import ConsoleReporter, Context, events_from_environment

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="drywall-qa: data plane, training and monitoring for text-prompted drywall QA segmentation.",
)


def err(line: str) -> None:
    typer.echo(line, err=True)


def context() -> Context:
    """The stages' context on the command line: progress on stderr, events to ``PREFECT_API_URL`` if set."""
    return Context(get_settings(), ConsoleReporter(), events_from_environment())


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def classify(exc: BaseException) -> DrywallError | None:
    """The project error an exception means to the user, or None for a genuine bug.

    One mechanism for every command: faults of the file system name the path and the fault
    (exit 2, an unusable input or output location); project errors keep their own class.
    """
    if isinstance(exc, DrywallError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted("interrupted")
    if isinstance(exc, OSError) and exc.filename is None and exc.errno in DISK_FULL:
        return OutputError(f"output: {os.strerror(exc.errno).lower()} (a write failed; nothing was renamed into place)")
    if isinstance(exc, OSError) and exc.filename is not None:
        where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
        return InputError(f"{where}: {exc.strerror or type(exc).__name__}")
    if isinstance(exc, pydantic.ValidationError) and exc.title == "Settings":
        bad = "; ".join(
            f"DRYWALL_{'__'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}" for e in exc.errors()
        )
        return InputError(f"invalid setting: {bad}")
    boto = sys.modules.get("botocore.exceptions")  # loaded only when S3 was used
    if boto and isinstance(exc, boto.BotoCoreError | boto.ClientError):
        store = get_settings().s3_endpoint_url or "AWS S3"
        return InputError(f"artifact store {store} (bucket {get_settings().s3_bucket}): {exc}")
    if isinstance(exc, MemoryError):
        return DrywallError("out of memory (try a smaller --batch-size or fewer images at once)")
    return None


def run(application: typer.Typer) -> None:
    """Run a typer app as a console command: every way out mapped to an exit code and one line."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("drywall_core").setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # SIGTERM cleans up like Ctrl-C
    try:
        rc = application(standalone_mode=False)
        if rc == 130:  # typer turns KeyboardInterrupt into a returned exit code
            raise KeyboardInterrupt
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except BaseException as exc:  # noqa: BLE001 - every way out of a command is mapped here
        import click

        if isinstance(exc, SystemExit):
            raise
        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            exc = KeyboardInterrupt()
        known = classify(exc)
        if known is None:
            if os.environ.get("DRYWALL_DEBUG"):
                raise
            err(f"error: unexpected {type(exc).__name__}: {exc} (a bug: set DRYWALL_DEBUG=1 for the traceback)")
            sys.exit(1)
        text = " ".join(str(known).split())  # one line per problem, whatever a library put in the message
        err(text if isinstance(known, Interrupted) else f"error: {text}")
        sys.exit(known.exit_code)
