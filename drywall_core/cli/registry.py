"""Registry commands: list, show, pull, promote, publish, evaluate, rollback, prune, audit."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from drywall_core.base.errors import CheckFailed
from drywall_core.cli.app import app, context, err
from drywall_core.stages import registry as ops
from drywall_core.stages.context import Context

registry_app = typer.Typer(no_args_is_help=True, help="Model registry: versions, champion, audit log.")
app.add_typer(registry_app, name="registry")


def _context() -> Context:
    ctx = context()
    err(f"registry: {ops.where(ctx)}")  # where it looked, so an empty answer is not a mystery
    return ctx


@registry_app.command("list")
def registry_list() -> None:
    """Versions, newest last, with the champion marked and each one's status; unreadable records exit 1."""
    listing = ops.list_versions(_context())
    for row in listing.rows:
        if row.status == "unreadable":
            typer.echo(f"! {row.version}  unreadable")
            continue
        mark = "*" if row.status == "champion" else " "
        typer.echo(
            f"{mark} {row.version}  mIoU {row.miou:.3f}  Dice {row.mean_dice:.3f}  {row.published_at}  {row.status}"
        )
    for v in listing.incomplete:
        typer.echo(f"? {v}  incomplete: files without a manifest (a cut publish, or one under way; see registry prune)")
    if not listing.champion and not listing.problems:
        typer.echo("(no champion)")
    for line in listing.problems:
        err(f"error: {line}")
    if listing.problems:
        raise CheckFailed(f"{len(listing.problems)} unreadable registry record(s)")


@registry_app.command("pull")
def registry_pull(
    version: Annotated[str, typer.Argument(help="Version id, or 'champion'.")],
    out: Annotated[Path, typer.Argument(help="Folder to write the version into (verified, loadable as --model).")],
) -> None:
    """Download a version (every file checked against its sha256) into OUT."""
    typer.echo(f"pulled {ops.pull(_context(), version, out)} into {out}")


@registry_app.command("prune")
def registry_prune(
    older_than_hours: Annotated[
        float, typer.Option(min=0, help="Only folders untouched this long (a younger one may be uploading).")
    ] = 24.0,
) -> None:
    """Remove incomplete version folders (files without a manifest: a publish cut off)."""
    removed = _context().models.prune_incomplete(older_than_hours * 3600)
    typer.echo(f"removed {len(removed)} incomplete version(s)" + (f": {', '.join(removed)}" if removed else ""))


@registry_app.command("show")
def registry_show(
    version: Annotated[str, typer.Argument(help="Version id, or 'champion'.")] = "champion",
    card: Annotated[bool, typer.Option("--card", help="Print the version's MODEL_CARD.md instead.")] = False,
) -> None:
    """A version's manifest (JSON), or its model card."""
    ctx = _context()
    v = ops.version_of(ctx, version)
    typer.echo(ctx.models.card(v) if card else json.dumps(ctx.models.show(v), indent=2))


@registry_app.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="Version id to make the champion.")],
    reason: Annotated[str, typer.Option(help="Why (audit log).")] = "manual",
    force: Annotated[
        bool, typer.Option(help="Repair: replace the champion alias even if it is corrupt (audited).")
    ] = False,
) -> None:
    """Make VERSION the champion (verified, compare-and-swap), bypassing the gate; audited."""
    moved = ops.promote(_context(), version, reason, force)
    if force:
        typer.echo(f"champion: {version} (forced; was {moved.previous or 'unreadable or none'})")
    elif moved.unchanged:
        typer.echo(f"{version} is already the champion; nothing changed (rollback target stays {moved.previous})")
    else:
        typer.echo(f"champion: {version}")


@registry_app.command("publish")
def registry_publish(
    run_dir: Annotated[Path, typer.Argument(help="Run folder written by `drywall train` (model/, eval/, run.json).")],
    export: Annotated[
        list[Path] | None, typer.Option("--export", help="Exports to judge on (default: the run's, from run.json).")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (audit log).")] = "published from drywall train",
) -> None:
    """Publish a `drywall train` run as a new version through the promotion gate; exit 1 if refused.

    As in the retrain flow: candidate and champion are measured on the run's validation images
    (same exports, same split), compared on the latest field photos (shadow), then the gate decides;
    the version is published either way, every decision goes to the audit log, and a refusal emits
    ``drywall.gate.refused`` to the Prefect API when ``PREFECT_API_URL`` is set.
    """
    from drywall_core.stages.release import publish_run

    ctx = _context()
    done = publish_run(ctx, run_dir, exports=export, reason=reason)
    for line in done.decision["reasons"]:
        typer.echo(f"gate: {line}")
    if not done.promoted:
        typer.echo(f"published {done.version}; champion stays {ctx.models.champion_version()}")
        raise CheckFailed(f"gate refused {done.version}: {done.reason}")
    typer.echo(f"published {done.version}; champion: {done.version}")


@registry_app.command("evaluate")
def registry_evaluate(
    export: Annotated[list[Path], typer.Option("--export", help="Roboflow COCO export to evaluate on (repeatable).")],
    dataset: Annotated[
        list[str] | None, typer.Option("--dataset", help="Dataset of each --export, in order (default: guessed).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Keep the reports (metrics.json, metrics.md, grid) here.")] = None,
) -> None:
    """Evaluate the champion on the exports' held-out images, as the evaluate-champion flow does:
    the evaluation is stored beside the model; exit 1 when a prompt regressed since promotion."""
    from drywall_core.cli.model import check_datasets
    from drywall_core.data.samples import collect_samples
    from drywall_core.stages.release import evaluate_champion

    check_datasets(export, dataset)
    ctx = _context()
    samples, specs = collect_samples(export, ctx.settings, dataset, progress=True)
    val = [x for x in samples if x.side == "val"]
    with tempfile.TemporaryDirectory(prefix="drywall-evaluate-") as tmp:
        result = evaluate_champion(ctx, val, specs, Path(out) if out else Path(tmp))
    if result.version is None:
        raise CheckFailed("no champion yet")
    for d in result.metrics["datasets"].values():
        typer.echo(f"{d['prompt']}: mIoU {d['miou']:.3f}, mean Dice {d['mean_dice']:.3f} ({d['images']} images)")
    typer.echo(f"stored {ctx.store.url}/{result.stored}")
    for line in result.regressions:
        err(f"regression: {line}")
    if result.regressions:
        raise CheckFailed(f"champion {result.version} regressed on {len(result.regressions)} prompt(s)")


@registry_app.command("rollback")
def registry_rollback(
    to: Annotated[str | None, typer.Option(help="Version to restore (default: the previous champion).")] = None,
) -> None:
    """Point the champion back at the previous (or a given) version; audited."""
    moved = ops.rollback(_context(), to)
    if moved.unchanged:
        typer.echo(f"{moved.version} is already the champion; nothing changed")
        return
    typer.echo(f"champion: {moved.version} (was {moved.previous})")


@registry_app.command("audit")
def registry_audit(
    last: Annotated[int, typer.Option(help="How many of the newest entries to show.")] = 20,
) -> None:
    """The last gate decisions, promotions and rollbacks."""
    for e in _context().models.audit_log()[-last:]:
        typer.echo(f"{e.get('at', '?')}  {e.get('action', '?'):<15} {e.get('version')}  {e.get('reason', '')}")
