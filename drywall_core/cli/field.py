"""Field commands: drift of new site photos, the label queue, crack measurements."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from drywall_core.base.errors import CheckFailed, InputError
from drywall_core.base.fsutil import naming_full_disk
from drywall_core.cli.app import app, context, err
from drywall_core.model.measure import measure_file
from drywall_core.stages import field


@app.command("label-queue")
def label_queue(
    model: Annotated[
        str, typer.Option(help="Model that predicts: artifact, model id, folder or registry:champion / :<version>.")
    ],
    images: Annotated[Path, typer.Option(help="Folder of field images (searched recursively).")],
    workspace: Annotated[str, typer.Option(help="Roboflow workspace slug.")],
    project: Annotated[str, typer.Option(help="Roboflow project slug (a dataset in the registry gives the prompt).")],
    top: Annotated[
        int | None, typer.Option(min=1, help="Images to queue (default: DRYWALL_LABEL_QUEUE__PER_RUN, 20).")
    ] = None,
    batch: Annotated[str | None, typer.Option(help="Roboflow batch name (default: drywall-qa-<UTC date>).")] = None,
    dry_run: Annotated[
        Path | None, typer.Option(help="Write what would be queued here (images, COCO, queue.json); upload nothing.")
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Prompt, when the project is not in the dataset registry.")] = None,
    challenger: Annotated[
        str | None, typer.Option(help="A second model: equally uncertain images go by how much the two disagree.")
    ] = None,
) -> None:
    """Send the K field images the model is least sure of to Roboflow, with its masks as pre-annotations."""
    ctx = context()
    done = field.label_queue_for(ctx, model, images, workspace, project, prompt, top, batch, challenger, dry_run)
    report = done.report
    if dry_run is not None:
        typer.echo(f"dry run: {len(report.queued)} images would be queued in {workspace}/{project} ({report.batch})")
        for e in report.queued:
            typer.echo(f"  {e['image']}  uncertain {e['uncertain_share']:.3f}  {e['regions']} region(s){_cracks(e)}")
        typer.echo(f"written to {dry_run}")
        return
    for e in report.queued:
        typer.echo(f"queued {e['image']}  uncertain {e['uncertain_share']:.3f}  image id {e['image_id']}")
    for name, why in report.failed:
        err(f"{name}: not queued ({why})")
    if report.near_duplicates:
        typer.echo(f"{len(report.near_duplicates)} near-duplicate(s) left out: {', '.join(report.near_duplicates)}")
    if report.over_limit:
        per_day = ctx.settings.label_queue.per_day
        err(f"{len(report.over_limit)} image(s) left for tomorrow: {per_day} per day reached")
    typer.echo(
        f"{len(report.queued)} queued in {workspace}/{project} ({report.batch}); {done.before} queued before, "
        f"{len(report.failed)} failed"
    )
    if report.failed:
        raise CheckFailed(f"{len(report.failed)} of {done.items} images could not be queued")


def _cracks(entry: dict) -> str:
    if "n_cracks" not in entry:
        return ""
    return (
        f"  {entry['n_cracks']} crack(s), {entry['total_length_px']:.0f} px long, widest {entry['max_width_px']:.1f} px"
    )


@app.command()
def measure(
    masks: Annotated[list[Path], typer.Argument(help="Mask PNGs (non-zero pixels are the object).")],
    px_per_mm: Annotated[
        float | None,
        typer.Option(help="Scale in pixels per mm: adds *_mm fields (default: setting)."),
    ] = None,
) -> None:
    """Count cracks and measure each one's length and width; one JSON line per mask."""
    settings = context().settings.measure
    scale = px_per_mm if px_per_mm is not None else settings.px_per_mm
    if scale is not None and scale <= 0:
        raise InputError(f"--px-per-mm must be positive, not {scale}")
    lines = [json.dumps(measure_file(path, scale, settings.min_area_px).to_dict()) for path in masks]
    for line in lines:
        typer.echo(line)


@app.command()
def drift(
    reference: Annotated[Path, typer.Option(help="Reference images folder, or a reference_profile.parquet.")],
    current: Annotated[Path, typer.Option(help="Folder of new field images (searched recursively).")],
    out: Annotated[Path, typer.Option(help="Output folder for drift.json and drift.html.")],
    drift_share: Annotated[
        float | None,
        typer.Option(help="Share of drifted features that means drift (default: DRYWALL_DRIFT_SHARE, 0.5)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Add model signals (foreground fraction, confidence); e.g. registry:champion.")
    ] = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option(help="Model-signal prompts (repeatable; default: the profile's, else the registry's)."),
    ] = None,
    workspace: Annotated[
        str | None,
        typer.Option(help="Also add the run to this Evidently workspace: a folder, or an `evidently ui` URL."),
    ] = None,
) -> None:
    """Evidently data-drift report of field images against a reference; exit 1 when drift is detected."""
    ctx = context()
    loaded = ctx.inference_model(model) if model else None
    with naming_full_disk(out):
        result = field.drift(
            ctx, reference, current, out, loaded, prompt, drift_share, workspace, strict_workspace=True
        )
    sm = result.summary
    typer.echo(
        f"drift {'DETECTED' if sm['drift_detected'] else 'not detected'}: {sm['drifted_share']:.0%} of features "
        f"drifted ({', '.join(sm['drifted_columns']) or 'none'}); {sm['n_reference']} reference vs "
        f"{sm['n_current']} current images, {len(sm['skipped'])} skipped -> {result.json_path}"
    )
    emb = sm.get("embeddings")
    if emb:
        typer.echo(
            f"image embeddings ({emb['method']}): score {emb['score']:.4g}, "
            f"{'drifted' if emb['drift_detected'] else 'no drift'}; decided by {sm['decided_by']}"
        )
    if result.detected:
        raise typer.Exit(1)  # a finding, already reported above, not an error
