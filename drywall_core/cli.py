"""The ``drywall`` command line: one typed command per pipeline stage.

Exit codes: 0 success; 1 the input was read but failed a check; 2 bad usage or unreadable input.
Errors go to stderr, one line per problem, never a bare traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from drywall_core.config import get_settings
from drywall_core.errors import CheckFailed, DrywallError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="drywall-qa: data plane, training and monitoring for text-prompted drywall QA segmentation.",
)


def _err(line: str) -> None:
    typer.echo(line, err=True)


ExportArg = Annotated[
    Path, typer.Argument(help="Roboflow COCO export folder (<split>/_annotations.coco.json).")
]
DatasetOpt = Annotated[
    str | None, typer.Option("--dataset", help="Dataset registry entry; guessed from the export if unset.")
]


@app.command()
def pull(
    workspace: Annotated[str, typer.Option(help="Roboflow workspace slug.")],
    project: Annotated[str, typer.Option(help="Roboflow project slug.")],
    version: Annotated[int, typer.Option(help="Dataset version number.")],
    out: Annotated[Path, typer.Option(help="Folder to create with the export.")],
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Download a dataset version (COCO) with the Roboflow SDK; OUT appears only when complete."""
    from drywall_core.sources import pull_roboflow

    s = get_settings()
    lineage = pull_roboflow(
        workspace,
        project,
        version,
        out,
        s.roboflow_key(),
        retries=s.pull_retries,
        backoff_s=s.pull_backoff_s,
        overwrite=overwrite,
        api_url=s.roboflow_api_url,
    )
    typer.echo(f"pulled {workspace}/{project}/{version} -> {out} ({_count(lineage)} images)")


def _count(lineage: dict) -> int:
    return sum(lineage.get("images", {}).values())


@app.command()
def validate(
    export: ExportArg,
    report: Annotated[
        Path | None, typer.Option(help="Write a JSON report here (Data Docs beside it).")
    ] = None,
    dataset: DatasetOpt = None,
) -> None:
    """Validate annotations with the Great Expectations suite; exit 1 when any check fails."""
    from drywall_core.datasets import load_registry
    from drywall_core.exports import open_export
    from drywall_core.validation import fresh_docs_dir, resolve_dataset, validate_export, write_report

    s = get_settings()
    exp = open_export(export)
    spec = resolve_dataset(exp, load_registry(s.datasets_file), dataset)
    docs = fresh_docs_dir(report) if report else None
    result = validate_export(exp, spec, s, docs_dir=docs)
    if report:
        write_report(result, report)
    n_img = sum(sp.images for sp in result.splits)
    n_ann = sum(sp.annotations for sp in result.splits)
    if not result.success:
        for line in result.lines():
            _err(line)
        raise CheckFailed(f"{export}: validation failed ({len(result.lines())} failed expectations)")
    typer.echo(
        f"valid: {export} (dataset '{spec.name}', {len(result.splits)} splits, {n_img} images, "
        f"{n_ann} annotations)"
    )


@app.command()
def masks(
    export: ExportArg,
    out: Annotated[Path, typer.Option(help="Output folder: OUT/<split>/<image stem>.png")],
    workers: Annotated[int | None, typer.Option(help="Processes (default: settings, 0 = all cores).")] = None,
) -> None:
    """Render one binary mask per image (union of its annotations), incrementally and in parallel."""
    from drywall_core.exports import open_export
    from drywall_core.masks import render_masks

    n = get_settings().mask_workers if workers is None else workers
    stats = render_masks(open_export(export), out, workers=n)
    typer.echo(
        f"masks: {stats.rendered} rendered, {stats.skipped} unchanged, {stats.removed} removed -> {out}"
    )


@app.command()
def split(
    export: ExportArg,
    out: Annotated[Path, typer.Option(help="JSON file with the train/val assignment.")],
    seed: Annotated[int | None, typer.Option(help="Seed (default: settings).")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Share of sources in val.")] = None,
) -> None:
    """Split train/val by source photo so that no photo is on both sides."""
    from drywall_core.exports import open_export
    from drywall_core.splits import split_by_source, write_plan

    s = get_settings()
    plan = split_by_source(
        open_export(export),
        seed=s.split_seed if seed is None else seed,
        val_fraction=s.val_fraction if val_fraction is None else val_fraction,
    )
    write_plan(plan, out)
    typer.echo(
        f"split: {len(plan.train)} train / {len(plan.val)} val images, "
        f"{len(plan.sources('train'))} / {len(plan.sources('val'))} sources -> {out}"
    )


@app.command()
def sample(
    out: Annotated[Path, typer.Option(help="Folder for the synthetic exports.")],
    seed: int = 0,
    sources: Annotated[int, typer.Option(help="Source photos per task.")] = 24,
    overwrite: bool = False,
) -> None:
    """Generate a small synthetic Roboflow-layout export per task (no network needed)."""
    from drywall_core.sources import generate_synthetic

    for name, path in generate_synthetic(out, seed=seed, n_sources=sources, overwrite=overwrite).items():
        typer.echo(f"{name}: {path}")


@app.command()
def datasets() -> None:
    """List the dataset registry: prompt, label strength, synonyms."""
    from drywall_core.datasets import load_registry

    for spec in load_registry(get_settings().datasets_file).datasets.values():
        typer.echo(
            f"{spec.name}: '{spec.prompt}' ({spec.label_strength}); synonyms: {', '.join(spec.synonyms)}"
        )


@app.command()
def demo() -> None:
    """Run the data plane end to end on a synthetic sample under $DRYWALL_HOME/demo."""
    from drywall_core.demo import run_demo

    run_demo(get_settings())


def main() -> None:
    """Console entry point: map project errors to exit codes and one-line messages."""
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("drywall_core").setLevel(logging.INFO)
    try:
        app(standalone_mode=False)
    except DrywallError as exc:
        _err(f"error: {exc}")
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        _err("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
