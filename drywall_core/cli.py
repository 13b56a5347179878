"""The ``drywall`` command line: one typed command per pipeline stage.

Exit codes: 0 success; 1 the input was read but failed a check; 2 bad usage or unreadable input.
Errors go to stderr, one line per problem, never a bare traceback.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import pydantic
import typer

from drywall_core.config import TrainConfig, get_settings, resolve_train_config
from drywall_core.errors import CheckFailed, DrywallError, InputError, Interrupted, OutputError
from drywall_core.fsutil import DISK_FULL, naming_full_disk

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="drywall-qa: data plane, training and monitoring for text-prompted drywall QA segmentation.",
)


def _err(line: str) -> None:
    typer.echo(line, err=True)


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
    report: Annotated[Path | None, typer.Option(help="Write a JSON report here (Data Docs beside it).")] = None,
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
    try:
        with naming_full_disk(docs or report or export):
            result = validate_export(exp, spec, s, docs_dir=docs)
    except BaseException:
        if docs:
            shutil.rmtree(docs, ignore_errors=True)  # no half-built Data Docs on an interrupt
        raise
    if report:
        with naming_full_disk(report):
            write_report(result, report)
    n_img = sum(sp.images for sp in result.splits)
    n_ann = sum(sp.annotations for sp in result.splits)
    if not result.success:
        for line in result.lines():
            _err(line)
        raise CheckFailed(f"{export}: validation failed ({len(result.lines())} failed expectations)")
    typer.echo(
        f"valid: {export} (dataset '{spec.name}', {len(result.splits)} splits, {n_img} images, {n_ann} annotations)"
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
    from drywall_core.exports import open_export
    from drywall_core.splits import split_by_source, write_plan

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
    from drywall_core.ingest import ingest_export
    from drywall_core.storage import store_from_settings

    s = get_settings()
    store = store_from_settings(s)
    record = ingest_export(export, s, store, dataset, report, progress=True)
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
    from drywall_core.sources import generate_synthetic

    with naming_full_disk(out):
        made = generate_synthetic(out, seed=seed, n_sources=sources, overwrite=overwrite)
    for name, path in made.items():
        typer.echo(f"{name}: {path}")


@app.command()
def datasets() -> None:
    """List the dataset registry: prompt, label strength, synonyms."""
    from drywall_core.datasets import load_registry

    for spec in load_registry(get_settings().datasets_file).datasets.values():
        typer.echo(f"{spec.name}: '{spec.prompt}' ({spec.label_strength}); synonyms: {', '.join(spec.synonyms)}")


model_app = typer.Typer(no_args_is_help=True, help="Model utilities.")
app.add_typer(model_app, name="model")


@model_app.command("init-tiny")
def model_init_tiny(
    out: Annotated[Path, typer.Argument(help="Folder to write (save_pretrained layout).")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny random CLIPSeg (small config, real small vocabulary) loadable like the real one."""
    from drywall_core.model import init_tiny

    with naming_full_disk(out):
        init_tiny(out, seed=seed)
    typer.echo(f"tiny CLIPSeg written to {out}")


@model_app.command("info")
def model_info(model: Annotated[str, typer.Argument(help="Model id, folder or fine-tuned artifact.")]) -> None:
    """Show a model's base, revision, sizes and (for artifacts) its recorded metrics."""
    from drywall_core.model import load_model

    loaded = load_model(resolve_model(model, get_settings()))
    total = sum(p.numel() for p in loaded.model.parameters())
    dec = sum(p.numel() for p in loaded.model.decoder.parameters())
    typer.echo(f"base: {loaded.base_id} (revision {loaded.revision})")
    typer.echo(f"parameters: {total:,} total, {dec:,} decoder; input {loaded.image_size}px")
    if loaded.manifest.get("metrics"):
        typer.echo(f"metrics: {json.dumps(loaded.manifest['metrics']['per_prompt'])}")


def _train_help(field: str, what: str) -> str:
    """Help text naming the setting behind an option and its default (options override settings)."""
    default = TrainConfig.model_fields[field].default
    return f"{what} (default: DRYWALL_TRAIN__{field.upper()}, {default})."


ExportsOpt = Annotated[list[Path], typer.Option("--export", help="Roboflow COCO export (repeatable).")]
DatasetsOpt = Annotated[
    list[str] | None, typer.Option("--dataset", help="Dataset of each --export, in order (default: guessed).")
]


def _samples(exports: list[Path], datasets: list[str] | None, validate: bool = False):
    from drywall_core.ingest import validated_samples
    from drywall_core.samples import collect_samples

    if datasets and len(datasets) != len(exports):
        raise InputError(f"--dataset given {len(datasets)} times for {len(exports)} --export folders")
    if validate:  # training validates like the ingest flow: bad annotations never reach a model
        return validated_samples(exports, datasets, get_settings(), progress=True)
    return collect_samples(exports, get_settings(), datasets, progress=True)


# files only `drywall train` writes; run.json first of all, so a run that failed early is still its own
RUN_MARKERS = ("run.json", "checkpoint.pt", "metrics.jsonl", "train_summary.json")


def _claim_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """A run folder holds one run: an existing one is continued (--resume) or replaced (--overwrite)."""
    from drywall_core.fsutil import refuse_non_folder

    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other")
    refuse_non_folder(out)
    if not out.is_dir() or not any(out.iterdir()) or resume:
        return
    if not overwrite:
        raise InputError(f"{out}: run folder exists and is not empty (pass --resume to continue it or --overwrite)")
    if not any((out / m).exists() for m in RUN_MARKERS):
        raise InputError(f"{out}: not a run folder (no {', '.join(RUN_MARKERS)}); refusing to empty it")
    shutil.rmtree(out)


@app.command()
def train(
    export: ExportsOpt,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint, metrics.jsonl, curve, model/, eval/.")],
    model: Annotated[
        str | None,
        typer.Option(help="Base model: hub id or folder (default: DRYWALL_BASE_MODEL, CIDAS/clipseg-rd64-refined)."),
    ] = None,
    dataset: DatasetsOpt = None,
    epochs: Annotated[int | None, typer.Option(help=_train_help("epochs", "Maximum epochs"))] = None,
    batch_size: Annotated[int | None, typer.Option(help=_train_help("batch_size", "Images per step"))] = None,
    lr: Annotated[float | None, typer.Option(help=_train_help("lr", "AdamW learning rate"))] = None,
    patience: Annotated[
        int | None, typer.Option(help=_train_help("patience", "Epochs without val mIoU gain before stopping"))
    ] = None,
    seed: Annotated[int | None, typer.Option(help=_train_help("seed", "Seed of every random choice"))] = None,
    flip: Annotated[
        bool | None, typer.Option("--flip/--no-flip", help=_train_help("flip", "Also train on mirrored views"))
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt.")] = False,
    overwrite: Annotated[
        bool, typer.Option(help="Start afresh in an existing run folder (its files are removed).")
    ] = False,
    profile: Annotated[
        str | None,
        typer.Option(help="Named training recipe, e.g. tiny-demo (default: DRYWALL_TRAIN_PROFILE, none)."),
    ] = None,
) -> None:
    """Fine-tune the CLIPSeg decoder on the frozen-activation cache, evaluate it, write the artifact."""
    from drywall_core.model import load_model
    from drywall_core.publish import record_run_inputs
    from drywall_core.train import package_candidate
    from drywall_core.train import train as run_train

    s = get_settings()
    overrides = {
        k: v
        for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed, flip=flip).items()
        if v is not None
    }
    cfg = resolve_train_config(s.train, profile or s.train_profile, overrides)
    _claim_run_folder(out, resume=resume, overwrite=overwrite)
    samples, specs = _samples(export, dataset, validate=True)
    record_run_inputs(out, export, list(specs), s)
    loaded = load_model(model or s.base_model)
    result = run_train(loaded, samples, specs, cfg, out, s.cache_root, resume=resume)
    overall = package_candidate(loaded, samples, specs, result, out)["overall"]
    typer.echo(
        f"evaluation at full image size: mIoU {overall['miou']:.3f}, mean Dice {overall['mean_dice']:.3f} "
        f"({out / 'eval' / 'metrics.json'})"
    )
    typer.echo(
        f"best epoch {result.best_epoch}/{result.epochs_run}: val mIoU {result.best_val_miou:.3f} "
        f"(train_summary.json) -> {out / 'model'}"
    )


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(help="Fine-tuned artifact, model id or folder.")],
    export: ExportsOpt,
    out: Annotated[Path, typer.Option(help="metrics.json, metrics.md, best_worst.png")],
    dataset: DatasetsOpt = None,
    split: Annotated[str, typer.Option(help="val (held-out sources) or all images.")] = "val",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
) -> None:
    """Evaluate a model: per-prompt mIoU/Dice, threshold sweep, boundary F1, prompt robustness, latency."""
    from drywall_core.evaluate import evaluate as run_eval
    from drywall_core.evaluate import markdown_table, write_reports
    from drywall_core.model import load_model

    if split not in ("val", "all"):
        raise InputError(f"--split must be 'val' or 'all', not '{split}'")
    samples, specs = _samples(export, dataset)
    chosen = [x for x in samples if split == "all" or x.side == "val"]
    loaded = load_model(resolve_model(model, get_settings()))
    metrics = run_eval(loaded, chosen, specs, batch_size=batch_size)
    write_reports(loaded, chosen, specs, metrics, out)
    typer.echo(markdown_table(metrics))
    typer.echo(f"reports in {out}")


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    prompt: Annotated[str, typer.Option(help='Text prompt, e.g. "segment crack".')],
    model: Annotated[str, typer.Option(help="Fine-tuned artifact, model id or folder.")],
    out: Annotated[Path, typer.Option(help="Output folder for <stem>__<prompt>.png masks.")],
    batch_size: Annotated[int, typer.Option(min=1, help="Images decoded and predicted at a time.")] = 8,
    threshold: Annotated[
        float | None, typer.Option(min=0, max=1, help="Probability cut (default: the artifact's best val threshold).")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="int8 (quantized vision tower, CPU) or fp32 (default: DRYWALL_INFERENCE_PRECISION, int8)."),
    ] = None,
) -> None:
    """Predict binary masks ({0,255}, original size) for a text prompt; unreadable images exit 1."""
    from drywall_core.model import load_model
    from drywall_core.predict import for_inference, predict_files

    loaded = for_inference(
        load_model(resolve_model(model, get_settings())), precision or get_settings().inference_precision
    )
    report = predict_files(loaded, images, prompt, out, batch_size=batch_size, threshold=threshold)
    for path, why in report.failed:
        _err(f"{path}: cannot read image ({why}); skipped")
    typer.echo(f"wrote {len(report.written)} masks to {out}")
    if report.failed:
        raise CheckFailed(f"{len(report.failed)} of {len(images)} images could not be read")


@app.command("label-queue")
def label_queue(
    model: Annotated[str, typer.Option(help="Model that predicts: fine-tuned artifact, model id or folder.")],
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
    import tempfile

    from drywall_core import field
    from drywall_core import label_queue as lq
    from drywall_core.datasets import load_registry
    from drywall_core.drift import IMAGE_EXTENSIONS
    from drywall_core.model import load_model
    from drywall_core.predict import for_inference
    from drywall_core.sources.atomic import check_target, staged_dir
    from drywall_core.storage import store_from_settings

    s = get_settings()
    spec = load_registry(s.datasets_file).by_project(project)
    if spec is None and not prompt:
        raise InputError(f"project '{project}' is not in the dataset registry: pass --prompt")
    prompt = prompt or spec.prompt
    label = spec.class_name if spec else project
    if dry_run is not None:
        check_target(dry_run, overwrite=False)
    key = s.roboflow_key()
    if dry_run is None and not key:
        raise InputError("no Roboflow API key: set DRYWALL_ROBOFLOW_API_KEY or ROBOFLOW_API_KEY (or use --dry-run)")
    if not images.is_dir():
        raise InputError(f"{images}: image folder not found")
    photos = field.field_images(images, IMAGE_EXTENSIONS)
    if not photos:
        raise InputError(f"{images}: no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    store = store_from_settings(s)
    model = resolve_model(model, s)
    loaded = for_inference(load_model(model), s.inference_precision)
    version = loaded.manifest.get("version") or Path(model).name
    batch = batch or lq.default_batch()
    with tempfile.TemporaryDirectory(prefix="drywall-label-queue-") as tmp:
        run = field.predict_field(loaded, photos, [prompt], Path(tmp), str(version), done=None)
        for item in run.skipped:
            _err(f"{item['image']}: cannot read image ({item['reason']}); skipped")
        paths = {p.sha256: p.path for p in photos}
        other = for_inference(load_model(resolve_model(challenger, s)), s.inference_precision) if challenger else None
        k = top or s.label_queue.per_run
        items, before = lq.select(store, run.frame, paths, Path(tmp), workspace, project, prompt, k, other)
        if dry_run is not None:
            with staged_dir(dry_run, "label-queue") as staged, naming_full_disk(dry_run):
                report = lq.write_dry_run(items, label, batch, staged)
            typer.echo(f"dry run: {len(report.queued)} images would be queued in {workspace}/{project} ({batch})")
            for e in report.queued:
                typer.echo(f"  {e['image']}  uncertain {e['uncertain_share']:.3f}  {e['regions']} region(s)")
            typer.echo(f"written to {dry_run}")
            return
        client = lq.RoboflowProjectClient(workspace, project, key, s.roboflow_api_url)
        report = lq.queue_for_labelling(
            store,
            client,
            items,
            workspace,
            project,
            label,
            batch,
            s.label_queue.per_day,
            retries=s.pull_retries,
            backoff_s=s.pull_backoff_s,
        )
    for e in report.queued:
        typer.echo(f"queued {e['image']}  uncertain {e['uncertain_share']:.3f}  image id {e['image_id']}")
    for name, why in report.failed:
        _err(f"{name}: not queued ({why})")
    if report.over_limit:
        _err(f"{len(report.over_limit)} image(s) left for tomorrow: {s.label_queue.per_day} per day reached")
    typer.echo(
        f"{len(report.queued)} queued in {workspace}/{project} ({batch}); {before} queued before, "
        f"{len(report.failed)} failed"
    )
    if report.failed:
        raise CheckFailed(f"{len(report.failed)} of {len(items)} images could not be queued")


@app.command()
def drift(
    reference: Annotated[Path, typer.Option(help="Reference images folder, or a reference_profile.parquet.")],
    current: Annotated[Path, typer.Option(help="Folder of new field images (searched recursively).")],
    out: Annotated[Path, typer.Option(help="Output folder for drift.json and drift.html.")],
    drift_share: Annotated[
        float | None,
        typer.Option(help="Share of drifted features that means drift (default: DRYWALL_DRIFT_SHARE, 0.5)."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Add model signals (foreground fraction, confidence).")] = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option(help="Prompts for the model signals (repeatable; default: segment crack, segment taping area)."),
    ] = None,
    workspace: Annotated[
        str | None,
        typer.Option(help="Also add the run to this Evidently workspace: a folder, or an `evidently ui` URL."),
    ] = None,
) -> None:
    """Evidently data-drift report of field images against a reference; exit 1 when drift is detected."""
    from drywall_core import drift as d

    s = get_settings()
    share = s.drift_share if drift_share is None else drift_share
    ref_skipped: list[dict] = []
    if reference.is_file():
        ref_frame = d.load_profile(reference)
    else:
        ref_table = d.extract_features(d.find_images(reference), max_pixels=s.max_image_pixels)
        ref_frame, ref_skipped = ref_table.frame, ref_table.skipped
    cur = d.extract_features(d.find_images(current), max_pixels=s.max_image_pixels)
    if model:
        from drywall_core.model import load_model
        from drywall_core.predict import for_inference

        loaded = for_inference(load_model(resolve_model(model, s)), s.inference_precision)
        prompts = prompt or ["segment crack", "segment taping area"]
        d.add_model_signals(cur, loaded, prompts)
        if not reference.is_file():
            d.add_model_signals(ref_table, loaded, prompts)
            ref_frame = ref_table.frame
    for item in cur.skipped:
        _err(f"{item['path']}: skipped ({item['reason']})")
    with naming_full_disk(out):
        result = d.run_drift(ref_frame, cur, out, share, reference_skipped=ref_skipped)
    sm = result.summary
    if workspace:
        from drywall_core.datasets import load_registry
        from drywall_core.monitoring import record_drift

        prompts = load_registry(s.datasets_file).canonical_prompts
        try:
            run_id = record_drift(workspace, s.model_name, prompts, result.snapshot)
        except Exception as exc:  # noqa: BLE001 - named with its cause: a path or a service that is not there
            raise InputError(
                f"{workspace}: cannot add the run to the Evidently workspace ({type(exc).__name__}: {exc})"
            ) from None
        _err(f"added to Evidently workspace {workspace}, project '{s.model_name}' (run {run_id})")
    typer.echo(
        f"drift {'DETECTED' if sm['drift_detected'] else 'not detected'}: {sm['drifted_share']:.0%} of features "
        f"drifted ({', '.join(sm['drifted_columns']) or 'none'}); {sm['n_reference']} reference vs "
        f"{sm['n_current']} current images, {len(sm['skipped'])} skipped -> {result.json_path}"
    )
    if sm["drift_detected"]:
        raise typer.Exit(1)  # a finding, already reported above, not an error


registry_app = typer.Typer(no_args_is_help=True, help="Model registry: versions, champion, audit log.")
app.add_typer(registry_app, name="registry")


def resolve_model(ref: str | Path, settings: Any) -> str:
    """``registry:champion`` / ``registry:<version>`` -> a verified local copy (imported lazily: torch)."""
    from drywall_core.registry import resolve_model as resolve

    return resolve(ref, settings)


def _registry():
    from drywall_core.registry import ModelRegistry
    from drywall_core.storage import LocalStore, store_from_settings

    s = get_settings()
    reg = ModelRegistry(store_from_settings(s), s.model_name)
    where = f"{reg.store.url}/{reg.root}"
    if isinstance(reg.store, LocalStore) and not (reg.store.root / reg.root).exists():
        where += " (empty: no such folder; is DRYWALL_HOME right?)"
    _err(f"registry: {where}")  # where it looked, so an empty answer is not a mystery
    return reg


def _version_history(log: list[dict[str, Any]]) -> dict[str, str]:
    """Per version, what the audit log says happened to it last: promoted before, or refused."""
    moved = ("promote", "manual-promote", "forced-promote", "rollback")
    status: dict[str, str] = {}
    for e in log:
        v = e.get("version")
        if not v:
            continue
        if e.get("action") in moved and not str(e.get("outcome", "done")).startswith("interrupted"):
            status[v] = "promoted before"
        elif e.get("action") == "refuse" and status.get(v) != "promoted before":
            status[v] = "refused"
    return status


@registry_app.command("list")
def registry_list() -> None:
    """Versions, newest last, with the champion marked; unreadable records are named (exit 1)."""
    from drywall_core.registry import CorruptRecord

    reg = _registry()
    problems: list[str] = []
    try:
        champion = reg.champion_version()
    except CorruptRecord as exc:
        champion, problems = None, [str(exc)]
    versions = reg.versions()
    if champion and champion not in versions:
        problems.append(
            f"{reg.where(reg.alias_key)}: the champion alias names version '{champion}', which does not exist "
            "(repair: drywall registry promote VERSION --force)"
        )
    history = _version_history(reg.audit_log())
    for v in versions:
        try:
            record = reg.show(v)
        except CorruptRecord as exc:
            problems.append(str(exc))
            typer.echo(f"! {v}  unreadable")
            continue
        m = record.get("metrics", {})
        mark = "*" if v == champion else " "
        status = "champion" if v == champion else history.get(v, "published")
        typer.echo(
            f"{mark} {v}  mIoU {m.get('miou', float('nan')):.3f}  Dice {m.get('mean_dice', float('nan')):.3f}"
            f"  {record.get('published_at', '-')}  {status}"
        )
    for v in reg.incomplete():
        typer.echo(f"? {v}  incomplete: files without a manifest (a cut publish, or one under way; see registry prune)")
    if not champion and not problems:
        typer.echo("(no champion)")
    for line in problems:
        _err(f"error: {line}")
    if problems:
        raise CheckFailed(f"{len(problems)} unreadable registry record(s)")


@registry_app.command("pull")
def registry_pull(
    version: Annotated[str, typer.Argument(help="Version id, or 'champion'.")],
    out: Annotated[Path, typer.Argument(help="Folder to write the version into (verified, loadable as --model).")],
) -> None:
    """Download a version (every file checked against its sha256) into OUT."""
    from drywall_core.fsutil import refuse_non_folder

    reg = _registry()
    v = reg.champion_version() if version == "champion" else version
    if not v:
        raise CheckFailed("no champion yet")
    refuse_non_folder(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: folder exists and is not empty")
    reg.download(v, out)
    typer.echo(f"pulled {v} into {out}")


@registry_app.command("prune")
def registry_prune(
    older_than_hours: Annotated[
        float, typer.Option(min=0, help="Only folders untouched this long (a younger one may be uploading).")
    ] = 24.0,
) -> None:
    """Remove incomplete version folders (files without a manifest: a publish cut off)."""
    removed = _registry().prune_incomplete(older_than_hours * 3600)
    typer.echo(f"removed {len(removed)} incomplete version(s)" + (f": {', '.join(removed)}" if removed else ""))


@registry_app.command("show")
def registry_show(
    version: Annotated[str, typer.Argument(help="Version id, or 'champion'.")] = "champion",
    card: Annotated[bool, typer.Option("--card", help="Print the version's MODEL_CARD.md instead.")] = False,
) -> None:
    """A version's manifest (JSON), or its model card."""
    reg = _registry()
    v = reg.champion_version() if version == "champion" else version
    if not v:
        raise CheckFailed("no champion yet")
    typer.echo(reg.card(v) if card else json.dumps(reg.show(v), indent=2))


@registry_app.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="Version id to make the champion.")],
    reason: Annotated[str, typer.Option(help="Why (audit log).")] = "manual",
    force: Annotated[
        bool, typer.Option(help="Repair: replace the champion alias even if it is corrupt (audited).")
    ] = False,
) -> None:
    """Make VERSION the champion (verified, compare-and-swap), bypassing the gate; audited."""
    reg = _registry()
    if force:
        alias = reg.force_promote(version, reason=reason)
        typer.echo(f"champion: {version} (forced; was {alias['previous'] or 'unreadable or none'})")
        return
    current = reg.champion()
    alias = reg.promote(version, current[1] if current else None, reason=reason, action="manual-promote")
    if alias.get("unchanged"):
        typer.echo(f"{version} is already the champion; nothing changed (rollback target stays {alias['previous']})")
        return
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

    The champion is evaluated on the run's validation images (same exports, same split), exactly
    as the retrain flow does, then the gate decides; the version is published either way and
    every decision goes to the audit log.
    """
    from drywall_core.publish import publish_run

    reg = _registry()
    done = publish_run(reg, run_dir, get_settings(), exports=export, reason=reason)
    for line in done.decision["reasons"]:
        typer.echo(f"gate: {line}")
    if not done.outcome["promoted"]:
        typer.echo(f"published {done.version}; champion stays {reg.champion_version()}")
        raise CheckFailed(f"gate refused {done.version}: {done.outcome['reason']}")
    typer.echo(f"published {done.version}; champion: {done.version}")


@registry_app.command("rollback")
def registry_rollback(
    to: Annotated[str | None, typer.Option(help="Version to restore (default: the previous champion).")] = None,
) -> None:
    """Point the champion back at the previous (or a given) version; audited."""
    alias = _registry().rollback(to)
    if alias.get("unchanged"):
        typer.echo(f"{alias['version']} is already the champion; nothing changed")
        return
    typer.echo(f"champion: {alias['version']} (was {alias['previous']})")


@registry_app.command("audit")
def registry_audit(
    last: Annotated[int, typer.Option(help="How many of the newest entries to show.")] = 20,
) -> None:
    """The last gate decisions, promotions and rollbacks."""
    for e in _registry().audit_log()[-last:]:
        typer.echo(f"{e.get('at', '?')}  {e.get('action', '?'):<15} {e.get('version')}  {e.get('reason', '')}")


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
            _err(f"error: unexpected {type(exc).__name__}: {exc} (a bug: set DRYWALL_DEBUG=1 for the traceback)")
            sys.exit(1)
        text = " ".join(str(known).split())  # one line per problem, whatever a library put in the message
        _err(text if isinstance(known, Interrupted) else f"error: {text}")
        sys.exit(known.exit_code)


def main() -> None:
    """The domain commands alone; the installed ``drywall`` adds the orchestration ones (deployments.cli)."""
    run(app)


if __name__ == "__main__":
    main()
