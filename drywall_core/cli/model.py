"""Model commands: train, evaluate, predict, and the model utilities (init-tiny, info)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from drywall_core.base.config import TrainConfig, resolve_train_config
from drywall_core.base.errors import CheckFailed, InputError
from drywall_core.base.fsutil import naming_full_disk
from drywall_core.cli.app import app, context, err

model_app = typer.Typer(no_args_is_help=True, help="Model utilities.")
app.add_typer(model_app, name="model")

ModelOpt = Annotated[
    str, typer.Option(help="Fine-tuned artifact, model id, folder, registry:champion or registry:<version>.")
]
ExportsOpt = Annotated[list[Path], typer.Option("--export", help="Roboflow COCO export (repeatable).")]
DatasetsOpt = Annotated[
    list[str] | None, typer.Option("--dataset", help="Dataset of each --export, in order (default: guessed).")
]


@model_app.command("init-tiny")
def model_init_tiny(
    out: Annotated[Path, typer.Argument(help="Folder to write (save_pretrained layout).")],
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a tiny random CLIPSeg (small config, real small vocabulary) loadable like the real one."""
    from drywall_core.model.tiny import init_tiny

    with naming_full_disk(out):
        init_tiny(out, seed=seed)
    typer.echo(f"tiny CLIPSeg written to {out}")


@model_app.command("info")
def model_info(
    model: Annotated[str, typer.Argument(help="Model id, folder, fine-tuned artifact or registry:<version>.")],
) -> None:
    """Show a model's base, revision, sizes and (for artifacts) its recorded metrics."""
    from drywall_core.model.load import load_model

    loaded = load_model(context().model_path(model))
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


def check_datasets(exports: list[Path], datasets: list[str] | None) -> None:
    if datasets and len(datasets) != len(exports):
        raise InputError(f"--dataset given {len(datasets)} times for {len(exports)} --export folders")


# files only `drywall train` writes; run.json first of all, so a run that failed early is still its own
RUN_MARKERS = ("run.json", "checkpoint.pt", "metrics.jsonl", "train_summary.json")


def _claim_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """A run folder holds one run: an existing one is continued (--resume) or replaced (--overwrite)."""
    from drywall_core.base.fsutil import refuse_non_folder

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
    from drywall_core.stages.train import train_run

    ctx = context()
    options = dict(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed, flip=flip)
    overrides = {k: v for k, v in options.items() if v is not None}
    cfg = resolve_train_config(ctx.settings.train, profile or ctx.settings.train_profile, overrides)
    check_datasets(export, dataset)
    _claim_run_folder(out, resume=resume, overwrite=overwrite)
    run = train_run(ctx, export, dataset, out, model, cfg, resume=resume)
    typer.echo(
        f"evaluation at full image size: mIoU {run.overall['miou']:.3f}, mean Dice {run.overall['mean_dice']:.3f} "
        f"({out / 'eval' / 'metrics.json'})"
    )
    typer.echo(
        f"best epoch {run.best_epoch}/{run.epochs_run}: val mIoU {run.best_val_miou:.3f} "
        f"(train_summary.json) -> {out / 'model'}"
    )


@app.command()
def evaluate(
    model: ModelOpt,
    export: ExportsOpt,
    out: Annotated[Path, typer.Option(help="metrics.json, metrics.md, best_worst.png")],
    dataset: DatasetsOpt = None,
    split: Annotated[str, typer.Option(help="val (held-out sources) or all images.")] = "val",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
) -> None:
    """Evaluate a model: per-prompt mIoU/Dice, threshold sweep, boundary F1, prompt robustness, latency."""
    from drywall_core.data.samples import collect_samples
    from drywall_core.model.evaluate import evaluate as run_eval
    from drywall_core.model.evaluate import markdown_table, write_reports
    from drywall_core.model.load import load_model

    if split not in ("val", "all"):
        raise InputError(f"--split must be 'val' or 'all', not '{split}'")
    check_datasets(export, dataset)
    ctx = context()
    samples, specs = collect_samples(export, ctx.settings, dataset, progress=True)
    chosen = [x for x in samples if split == "all" or x.side == "val"]
    loaded = load_model(ctx.model_path(model))
    metrics = run_eval(loaded, chosen, specs, batch_size=batch_size)
    write_reports(loaded, chosen, specs, metrics, out)
    typer.echo(markdown_table(metrics))
    typer.echo(f"reports in {out}")


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    prompt: Annotated[str, typer.Option(help='Text prompt, e.g. "segment crack".')],
    out: Annotated[Path, typer.Option(help="Output folder for <stem>__<prompt>.png masks.")],
    model: Annotated[
        str | None,
        typer.Option(help="Fine-tuned artifact, model id, folder, registry:champion or registry:<version>."),
    ] = None,
    server: Annotated[
        str | None, typer.Option(help="A prediction service (drywall serve) to ask instead of a local model.")
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="DRYWALL_API_KEY", help="The service's API key (env DRYWALL_API_KEY).")
    ] = None,
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
    from drywall_core.model.predict import predict_files

    if (model is None) == (server is None):
        raise InputError("give --model (predict here) or --server (ask a prediction service), one of them")
    if server is not None:
        from drywall_core.serve.client import predict_remote

        if threshold is not None or precision is not None:
            raise InputError("--threshold and --precision are the service's own with --server")
        report = predict_remote(server, images, prompt, out, api_key)
    else:
        loaded = context().inference_model(model, precision)
        report = predict_files(loaded, images, prompt, out, batch_size=batch_size, threshold=threshold)
    for path, why in report.failed:
        err(f"{path}: cannot read image ({why}); skipped")
    typer.echo(f"wrote {len(report.written)} masks to {out}")
    if report.failed:
        raise CheckFailed(f"{len(report.failed)} of {len(images)} images could not be read")
