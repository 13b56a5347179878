"""Data commands: pull, validate, masks, split, ingest, sample, datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from drywall_core.base.config import get_settings
from drywall_core.base.errors import CheckFailed
from drywall_core.base.fsutil import naming_full_disk
from drywall_core.cli.app import app, context, err
from drywall_core.stages import data

ExportArg = Annotated[Path, typer.Argument(help="Roboflow COCO export folder (<split>/_annotations.coco.json).")]
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
    pulled = data.pull(context(), workspace, project, version, out, overwrite=overwrite)
    typer.echo(f"pulled {workspace}/{project}/{version} -> {out} ({pulled.images} images)")


@app.command()
def validate(
    export: ExportArg,
    report: Annotated[Path | None, typer.Option(help="Write a JSON report here (Data Docs beside it).")] = None,
    dataset: DatasetOpt = None,
) -> None:
    """Validate annotations with the Great Expectations suite; exit 1 when any check fails."""
    result = data.validate(context(), export, dataset, report)
    splits = result.report.splits
    if not result.success:
        for line in result.report.lines():
            err(line)
        raise CheckFailed(f"{export}: validation failed ({len(result.report.lines())} failed expectations)")
    typer.echo(
        f"valid: {export} (dataset '{result.spec.name}', {len(splits)} splits, "
        f"{sum(sp.images for sp in splits)} images, {sum(sp.annotations for sp in splits)} annotations)"
    )


@app.command()
def masks(
    export: ExportArg,
    out: Annotated[Path, typer.Option(help="Output folder: OUT/<split>/<image stem>.png")],
    workers: Annotated[int | None, typer.Option(help="Processes (default: settings, 0 = all cores).")] = None,
) -> None:
    """Render one binary mask per image (union of its annotations), incrementally and in parallel."""
    from drywall_core.data.exports import open_export
    from drywall_core.data.masks import render_masks

    n = get_settings().mask_workers if workers is None else workers
    stats = render_masks(open_export(export), out, workers=n)
    typer.echo(f"masks: {stats.rendered} rendered, {stats.skipped} unchanged, {stats.removed} removed -> {out}")


@app.command()
def split(
    export: ExportArg,
    out: Annotated[Path, typer.Option(help="JSON file with the train/val assignment.")],
    seed: Annotated[int | None, typer.Option(help="Split seed (default: DRYWALL_SPLIT_SEED, 42).")] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Share of source photos in val (default: DRYWALL_VAL_FRACTION, 0.2).")
    ] = None,
) -> None:
    """Split train/val by source photo so that no photo is on both sides."""
    from drywall_core.data.exports import open_export
    from drywall_core.data.splits import split_by_source, write_plan

    s = get_settings()
    plan = split_by_source(
        open_export(export),
        seed=s.split_seed if seed is None else seed,
        val_fraction=s.val_fraction if val_fraction is None else val_fraction,
    )
    with naming_full_disk(out):
        write_plan(plan, out)
    typer.echo(
        f"split: {len(plan.train)} train / {len(plan.val)} val images, "
        f"{len(plan.sources('train'))} / {len(plan.sources('val'))} sources -> {out}"
    )


@app.command()
def ingest(
    export: ExportArg,
    dataset: DatasetOpt = None,
    report: Annotated[
        Path | None, typer.Option(help="Write the JSON validation report here (Data Docs beside it).")
    ] = None,
) -> None:
    """Validate, render masks, split and store the export as a dataset snapshot; prints its reference."""
    record = data.ingest(context(), export, dataset, report)
    c = record["counts"]
    typer.echo(
        f"snapshot {record['ref']}: {c['train_images']} train / {c['val_images']} val images, "
        f"{record['uploaded_files']} files uploaded -> {record['uri']}"
    )


@app.command()
def sample(
    out: Annotated[Path, typer.Option(help="Folder for the synthetic exports.")],
    seed: Annotated[int, typer.Option(help="Seed of the generated images and annotations.")] = 0,
    sources: Annotated[int, typer.Option(min=1, help="Source photos per task.")] = 24,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Generate a small synthetic Roboflow-layout export per task (no network needed)."""
    from drywall_core.data.sources import generate_synthetic

    with naming_full_disk(out):
        made = generate_synthetic(out, seed=seed, n_sources=sources, overwrite=overwrite)
    for name, path in made.items():
        typer.echo(f"{name}: {path}")


@app.command()
def datasets() -> None:
    """List the dataset registry: prompt, label strength, synonyms."""
    for spec in context().datasets.datasets.values():
        typer.echo(f"{spec.name}: '{spec.prompt}' ({spec.label_strength}); synonyms: {', '.join(spec.synonyms)}")
