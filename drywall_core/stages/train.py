"""Train a candidate: on local exports into a run folder (``drywall train``), or on dataset
snapshots into the store's staging area (the train flow, on any host of the gpu pool).

Both fit, evaluate and write the artifact through one composition
(:func:`drywall_core.release.candidates.fit_candidate`), and both report each epoch through the context.
The base model is loaded here, once, from the reference the caller gave.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drywall_core.base.config import TrainConfig
from drywall_core.stages.context import Context

PROGRESS_KEY = "training-progress"


def recorded_settings(ctx: Context, base_model: str, train_config: dict[str, Any], profile: str | None) -> dict:
    """Every setting that changes the result of a retrain, as resolved for this run."""
    s = ctx.settings
    return {
        "base_model": base_model,
        "profile": profile,
        "train": train_config,
        "gate": s.gate.model_dump(),
        "split_seed": s.split_seed,
        "val_fraction": s.val_fraction,
    }


def epoch_reporter(ctx: Context, cfg: TrainConfig) -> Any:
    """Each finished epoch as a progress update and a log line."""

    def on_epoch(row: dict) -> None:
        note = f"epoch {row['epoch']}: val mIoU {row['val_miou']:.3f}"
        ctx.reporter.progress(PROGRESS_KEY, row["epoch"], cfg.epochs, note)
        ctx.reporter.info(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val mIoU {row['val_miou']:.4f}")

    return on_epoch


def cache_reporter(ctx: Context) -> Any:
    """The activation-cache build (the backbone once per image: minutes at real size) as progress."""

    def on_cache(done: int, total: int) -> None:
        ctx.reporter.progress("activation-cache", done, total, f"{done}/{total} views encoded")

    return on_cache


@dataclass
class Plan:
    """Whether a retrain trains: what it would train from, and what differs from the champion's."""

    trained_from: dict[str, Any]
    champion: str | None
    differs: list[str]
    force: bool = False

    @property
    def trains(self) -> bool:
        return bool(self.differs) or self.force

    def nothing_new_note(self) -> str:
        from drywall_core.base.markup import md

        return (
            f"Nothing new: champion {self.champion} was trained on the same dataset snapshots, base model and "
            "training config. No training, nothing published (pass force=true to retrain anyway).\n\n"
            + "\n".join(f"- {md(name)}: `{sid[:16]}`" for name, sid in self.trained_from["snapshots"].items())
        )


def plan_retrain(
    ctx: Context, snapshots: Sequence[str], base_model: str, train_config: dict[str, Any], force: bool = False
) -> Plan:
    """The same dataset snapshots, base model and training config as the champion's means nothing
    new: no training, nothing published (``force`` trains anyway)."""
    from drywall_core.data.snapshots import nothing_new, snapshots_of, training_identity
    from drywall_core.model.load import base_fingerprint

    trained_from = training_identity(snapshots_of(snapshots), base_fingerprint(base_model), train_config)
    current = ctx.models.champion_version()
    differs = nothing_new(trained_from, ctx.models.show(current) if current else None)
    plan = Plan(trained_from, current, differs, force)
    if plan.trains:
        ctx.reporter.info(f"retrain: training ({'forced' if not differs else '; '.join(differs)})")
    else:
        ctx.reporter.info(f"retrain: nothing new since champion {current}; not training")
    return plan


@dataclass
class TrainedRun:
    """A ``drywall train`` run folder: the artifact under ``model/``, reports under ``eval/``."""

    out: Path
    overall: dict[str, Any]
    best_epoch: int
    epochs_run: int
    best_val_miou: float


def train_run(
    ctx: Context,
    exports: Sequence[Path],
    datasets: Sequence[str] | None,
    out: Path,
    base_model: str | None,
    cfg: TrainConfig,
    resume: bool = False,
) -> TrainedRun:
    """Validate the exports (as ingest does), fit, evaluate and write the run folder."""
    from drywall_core.data.ingest import validated_samples
    from drywall_core.model.load import load_model
    from drywall_core.release.candidates import fit_candidate
    from drywall_core.stages.release import record_run_inputs

    ctx.reporter.info(f"validating {len(exports)} export(s) and rendering masks")
    samples, specs = validated_samples(list(exports), list(datasets) if datasets else None, ctx.settings, True)
    record_run_inputs(out, list(exports), list(specs), ctx)
    loaded = load_model(ctx.model_path(base_model or ctx.settings.base_model))
    result, paths = fit_candidate(
        loaded, samples, specs, cfg, out, ctx.settings.cache_root, resume, True, epoch_reporter(ctx, cfg),
        cache_reporter(ctx), ctx.settings.inference_precision,
    )  # fmt: skip
    return TrainedRun(Path(out), paths["overall"], result.best_epoch, result.epochs_run, result.best_val_miou)


def train_staged(
    ctx: Context, snapshots: Sequence[str], base_model: str, cfg: TrainConfig, staging: str, work: Path
) -> dict[str, Any]:
    """Train on the snapshots and stage the candidate in the store (resuming a staged checkpoint)."""
    from drywall_core.model.load import load_model
    from drywall_core.release.candidates import train_candidate

    s = ctx.settings
    ctx.reporter.progress(PROGRESS_KEY, 0, cfg.epochs, f"decoder fine-tuning, {cfg.epochs} epochs max")
    loaded = load_model(ctx.model_path(base_model))
    candidate = train_candidate(
        ctx.store, snapshots, loaded, cfg, staging, Path(work), s.home, s.cache_root,
        on_epoch_end=epoch_reporter(ctx, cfg), on_cache=cache_reporter(ctx),
        embedding_precision=s.inference_precision,
    )  # fmt: skip
    best = candidate["summary"]["best_epoch"]
    ctx.reporter.progress(PROGRESS_KEY, cfg.epochs, cfg.epochs, f"done: best epoch {best}")
    cache = candidate["summary"]["cache"]
    ctx.reporter.info(
        f"candidate staged at {candidate['uri']} (cache: {cache['encoded']} encoded, {cache['downloaded']} downloaded)"
    )
    return candidate
