"""Field stages: drift of new site photos, the champion's field predictions, the label queue.

One implementation each for the command (``drywall drift``, ``drywall label-queue``) and the flows
(``drift``, ``predict-field``): the same features, the same model signals, the same selection,
the same events.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from drywall_core.base.errors import InputError
from drywall_core.base.markup import md
from drywall_core.stages.context import Context

DRIFT_EVENT = "drywall.drift.detected"


# -- drift ------------------------------------------------------------------------------------


@dataclass
class DriftOutcome:
    summary: dict[str, Any]  # drift.json: verdict, drifted share and columns, per-column scores, counts
    json_path: Path
    html_path: Path
    model_signals: str  # "on", "off", or why they were not compared
    event_id: str | None = None
    monitoring_run: str | None = None

    @property
    def detected(self) -> bool:
        return bool(self.summary["drift_detected"])


def recorded_prompts(ctx: Context, profile: pd.DataFrame) -> list[str]:
    """The registered prompts whose model signals a reference profile holds (the ones its model was
    trained on): what drift compares when the caller names none."""
    return [p for p in ctx.prompts if f"fg_fraction__{'_'.join(p.split())}" in profile.columns]


def _signal_note(reference: pd.DataFrame, prompts: Sequence[str]) -> str:
    missing = [p for p in prompts if f"fg_fraction__{'_'.join(p.split())}" not in reference.columns]
    if not missing:
        return "on"
    return "not compared: the reference has no model signals for " + ", ".join(f"'{p}'" for p in missing)


def embedding_store(ctx: Context, model: Any) -> Any:
    """The photo embeddings of this model's backbone, stored by sha256 under the home's cache."""
    from drywall_core.model.embeddings import EmbeddingStore

    return EmbeddingStore(ctx.settings.embeddings_root, model)


def _snapshot_metadata(model: Any, payload: dict[str, Any]) -> dict[str, str]:
    """What a drift snapshot says of itself on the dashboard: the model version and the run."""
    version = payload.get("champion") or (model.manifest.get("version") if model is not None else None)
    return {"model_version": str(version or "none"), "run": str(payload.get("run", "local"))}


def _embedding_note(reference: pd.DataFrame, current: pd.DataFrame) -> str:
    from drywall_core.field.embedding_drift import embedding_columns

    if not embedding_columns(reference):
        return "not compared: the reference has no image embeddings"
    if not embedding_columns(current):
        return "not compared: no model to embed the current images"
    return "on"


def drift(
    ctx: Context,
    reference: Path,
    current: Path,
    out: Path,
    model: Any = None,
    prompts: Sequence[str] | None = None,
    share: float | None = None,
    workspace: str | None = None,
    strict_workspace: bool = False,
    event_payload: dict[str, Any] | None = None,
    current_features: Any = None,
) -> DriftOutcome:
    """Evidently data drift of the images under ``current`` against ``reference`` (a folder of
    images, or a stored ``reference_profile.parquet``); with ``model``, its foreground fraction and
    confidence per prompt are features too. A detected drift emits ``drywall.drift.detected``.

    ``workspace``: also add the run to this Evidently workspace (a folder or a service URL); when it
    cannot be reached that is an error with ``strict_workspace`` (the user asked for it), else a
    warning (the report is stored already). ``current_features``: a feature table a fan-out stage
    computed already."""
    from drywall_core.field import drift as d
    from drywall_core.field.embedding_drift import embedding_columns
    from drywall_core.field.monitoring import record_drift

    s = ctx.settings
    share = s.drift_share if share is None else share
    ref_skipped: list[dict] = []
    if Path(reference).is_file():
        ref_frame = d.load_profile(Path(reference))
        prompts = list(prompts or recorded_prompts(ctx, ref_frame) or ctx.prompts)
    else:
        prompts = list(prompts or ctx.prompts)
        ctx.reporter.info(f"drift: features of the reference images under {reference}")
        ref_table = d.extract_features(d.find_images(Path(reference)), max_pixels=s.max_image_pixels, progress=False)
        if model is not None:
            d.add_model_signals(ref_table, model, prompts)
            d.add_embeddings(ref_table, model, embedding_store(ctx, model))
        ref_frame, ref_skipped = ref_table.frame, ref_table.skipped
    if current_features is None:
        ctx.reporter.info(f"drift: features of the current images under {current}")
        current_features = d.extract_features(
            d.find_images(Path(current)), max_pixels=s.max_image_pixels, progress=False
        )
    signals = "off"
    if model is not None:
        ctx.reporter.info(f"drift: model signals for {len(current_features.frame)} images, {len(prompts)} prompt(s)")
        d.add_model_signals(current_features, model, prompts)
        signals = _signal_note(ref_frame, prompts)
        if signals != "on":
            ctx.reporter.warn(f"drift model signals {signals}")
        if embedding_columns(ref_frame):
            ctx.reporter.info(f"drift: image embeddings of {len(current_features.frame)} images")
            d.add_embeddings(current_features, model, embedding_store(ctx, model))
    embeddings = _embedding_note(ref_frame, current_features.frame)
    if embeddings != "on" and s.drift_decider != "features":
        ctx.reporter.warn(f"drift embeddings {embeddings}: image statistics decide")
    for item in current_features.skipped:
        ctx.reporter.warn(f"{item['path']}: skipped ({item['reason']})")
    metadata = _snapshot_metadata(model, event_payload or {})
    result = d.run_drift(
        ref_frame, current_features, Path(out), share, reference_skipped=ref_skipped,
        notes={"model_signals": signals, "embeddings_compared": embeddings},
        decider=s.drift_decider, embedding_test_name=s.drift_embedding_test,
        metadata=metadata, feature_rule=s.drift_feature_rule,
        slicing=slicing_of(ctx, current_features.frame, Path(current)),
    )  # fmt: skip
    summary = result.summary
    outcome = DriftOutcome(summary, result.json_path, result.html_path, signals)
    if workspace:
        try:
            outcome.monitoring_run = record_drift(
                workspace, s.model_name, ctx.prompts, result.snapshot, summary["slices"], metadata
            )
            ctx.reporter.info(f"drift run added to Evidently workspace {workspace}, project '{s.model_name}'")
        except Exception as exc:  # noqa: BLE001 - named with its cause: a path or a service that is not there
            why = f"{workspace}: cannot add the run to the Evidently workspace ({type(exc).__name__}: {exc})"
            if strict_workspace:
                raise InputError(why) from None
            ctx.reporter.warn(why)
    _drift_table(ctx, summary)
    _slice_table(ctx, summary["slices"])
    if outcome.detected:
        outcome.event_id = ctx.events.emit(
            DRIFT_EVENT,
            {"prefect.resource.id": "drywall.field-images"},
            {
                "drifted_share": summary["drifted_share"],
                "drifted_columns": summary["drifted_columns"],
                "decided_by": summary["decided_by"],
                "embedding_score": (summary["embeddings"] or {}).get("score"),
                "n_current": summary["n_current"],
                **(event_payload or {}),
            },
        )
    return outcome


def _drift_table(ctx: Context, sm: dict[str, Any]) -> None:
    rows = "\n".join(
        f"| {md(c)} | {md(v['method'])} | {v['score']:.4f} | {'yes' if c in sm['drifted_columns'] else ''} |"
        for c, v in sorted(sm["columns"].items())
    )
    verdict = "DRIFT DETECTED" if sm["drift_detected"] else "no drift"
    ctx.reporter.markdown(
        "drift-summary",
        f"**{verdict}**: {sm['drifted_share']:.0%} of features drifted (threshold {sm['drift_share_threshold']:.0%});"
        f" {sm['n_reference']} reference vs {sm['n_current']} current images, {len(sm['skipped'])} skipped"
        f" (model signals: {md(sm['model_signals'])}); decided by {md(sm['decided_by'])}{_embedding_line(sm)}\n\n"
        f"| feature | test | score (p-value) | drifted |\n|---|---|---|---|\n{rows}",
    )


def slicing_of(ctx: Context, frame: pd.DataFrame, root: Path) -> Any:
    """The current photos' sites (from their names under ``root``: S3 keys as fetched), cameras and
    capture weeks (EXIF), for the per-slice drift."""
    from drywall_core.data.slice_keys import names_under, slice_frame
    from drywall_core.field.drift import Slicing

    paths = [Path(p) for p in frame["path"]]
    cfg = ctx.settings.slices
    return Slicing(slice_frame(paths, names_under(paths, root), cfg.site_regex), cfg.min_photos)


def _slice_table(ctx: Context, slices: Sequence[dict[str, Any]]) -> None:
    """Per site, camera and week: photos, the verdict (or why not tested), drifted columns, signals."""
    if not slices:
        return
    rows = []
    for sl in slices:
        verdict = ("DRIFT" if sl["drift_detected"] else "no drift") if sl["tested"] else sl["note"]
        signals = ", ".join(f"{md(k)} {v:.3f}" for k, v in sorted((sl["signals"] or {}).items()))
        rows.append(
            f"| {sl['key']} | {md(sl['value'])} | {sl['n_current']} | {md(verdict)} "
            f"| {md(', '.join(sl['drifted_columns']))} | {signals} |"
        )
    drifted = [f"{sl['key']}={sl['value']}" for sl in slices if sl["drift_detected"]]
    if drifted:
        ctx.reporter.warn(f"drift in slices: {', '.join(drifted)}")
    ctx.reporter.markdown(
        "drift-slices",
        "**Drift per slice** (each slice against the whole reference; read beside the run's verdict)\n\n"
        "| key | value | photos | verdict | drifted columns | model signals (mean) |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows),
    )


def _embedding_line(sm: dict[str, Any]) -> str:
    emb = sm.get("embeddings")
    if not emb:
        return ""
    verdict = "drifted" if emb["drift_detected"] else "no drift"
    return f"\n\nImage embeddings ({md(emb['method'])}): score {emb['score']:.4g}, {verdict}."


# -- field predictions ------------------------------------------------------------------------


@dataclass
class FieldOutcome:
    version: str
    prompts: list[str]
    run: Any  # drywall_core.field.predictions.FieldRun: this run's rows, masks folder, skipped, already
    photos: list[Any]  # FieldImage: every photo looked at
    published: dict[str, Any] = field(default_factory=dict)
    model_dir: Path | None = None  # the version's folder: its embeddings spread the label queue's batches

    @property
    def predicted(self) -> int:
        return int(self.run.frame["sha256"].nunique()) if len(self.run.frame) else 0

    @property
    def images(self) -> dict[str, Path]:
        return {p.sha256: p.path for p in self.photos}


def predict_field(
    ctx: Context,
    version: str,
    model_dir: Path,
    images_dir: Path,
    out: Path,
    run: str = "local",
    image_link: Callable[[str], str] | None = None,
) -> FieldOutcome:
    """Every prompt on the photos this version has not predicted yet: masks and summary rows in the
    store (merged compare-and-swap), Evidently monitoring, the most uncertain pairs as a table."""
    from drywall_core.field import predictions as fp
    from drywall_core.field.drift import IMAGE_EXTENSIONS
    from drywall_core.field.monitoring import record_field
    from drywall_core.stages.release import monitor

    prompts = ctx.prompts
    photos = fp.field_images(Path(images_dir), IMAGE_EXTENSIONS)
    done = fp.predicted_shas(fp.read_summary(ctx.store, version), prompts)
    loaded = ctx.inference_model(model_dir)

    def on_batch(n: int, total: int) -> None:
        ctx.reporter.progress("field-predictions-progress", n, total, f"{n}/{total} images")

    lines = [p for p in prompts if ctx.datasets.measures_lines(p)]
    result = fp.predict_field(
        loaded,
        photos,
        prompts,
        Path(out),
        version,
        run=run,
        done=done,
        progress=False,
        on_batch=on_batch,
        lines=lines,
        min_area_px=ctx.settings.measure.min_area_px,
        site_pattern=ctx.settings.slices.site_regex,
        embeddings=embedding_store(ctx, loaded),
    )
    outcome = FieldOutcome(version, prompts, result, photos, model_dir=Path(model_dir))
    ctx.reporter.progress("field-predictions-progress", outcome.predicted, max(outcome.predicted, 1), "done")
    if len(result.frame):
        from drywall_core.field.slices import slice_signals

        outcome.published = fp.publish_predictions(ctx.store, version, result)
        meta = {"model_version": version, "run": run, "images": outcome.predicted}
        least = ctx.settings.slices.min_photos
        monitor(
            ctx,
            "field predictions",
            lambda where, model, ps: record_field(where, model, ps, result.frame, meta, least),
        )
        per_slice = slice_signals(result.frame, least)
        ctx.reporter.table("field-slices", per_slice, f"model signals per site, camera and week ({version})")
    for item in result.skipped:
        ctx.reporter.warn(f"{item['image']}: skipped ({item['reason']})")
    link = image_link or (lambda name: str(Path(images_dir) / name))
    ctx.reporter.table(
        "field-most-uncertain", uncertain_rows(ctx, version, result, link), f"most uncertain ({version})"
    )
    ctx.reporter.info(
        f"field predictions: {outcome.predicted} new images, {result.already} predicted before, "
        f"{len(result.skipped)} unreadable"
    )
    return outcome


def uncertain_rows(ctx: Context, version: str, result: Any, image_link: Callable[[str], str], k: int = 20) -> list:
    """The most uncertain image-prompt pairs of a run, with links to the photo and its stored mask."""
    from drywall_core.field import predictions as fp

    return [
        {
            "image": image_link(r.image),
            "prompt": r.prompt,
            "uncertain share": round(r.uncertain_share, 4),
            "mean entropy": round(r.mean_entropy, 4),
            "foreground": round(r.fg_fraction, 4),
            "confidence": round(r.mean_confidence, 4),
            **crack_cells(r),
            "mask": ctx.store.link(fp.predictions_key(version, r.mask)),
        }
        for r in fp.most_uncertain(result.frame, k).itertuples()
    ]


def crack_cells(row: Any) -> dict[str, Any]:
    """A table's crack columns for a summary row: count, total length, widest (blank if unmeasured)."""
    from drywall_core.field.predictions import row_measures

    m = row_measures(row)
    if m is None:
        return {"cracks": "", "length px": "", "max width px": ""}
    return {
        "cracks": m["n_cracks"],
        "length px": round(m["total_length_px"], 1),
        "max width px": round(m["max_width_px"], 1),
    }


def diversity_for(ctx: Context, loaded: Any, model_dir: Path) -> Any:
    """How the label queue spreads a batch (None when ``DRYWALL_LABEL_QUEUE__DIVERSE`` is off): the
    photos' embeddings from the store, the training photos' from the version's reference profile."""
    from drywall_core.field import label_queue as lq
    from drywall_core.field.drift import PROFILE_FILE
    from drywall_core.field.embedding_drift import embedding_columns

    cfg = ctx.settings.label_queue
    if not cfg.diverse:
        return None
    trained = None
    profile = Path(model_dir) / PROFILE_FILE
    if profile.is_file():
        frame = pd.read_parquet(profile)
        cols = embedding_columns(frame)
        trained = frame[cols].to_numpy() if cols else None
    return lq.Diversity(embedding_store(ctx, loaded).embed, trained, cfg.max_similarity, cfg.pool_factor)


# -- the label queue --------------------------------------------------------------------------


@dataclass
class ProjectQueue:
    """What one Roboflow project got from one run."""

    workspace: str
    project: str
    prompt: str
    report: Any  # drywall_core.field.label_queue.QueueReport
    items: int
    before: int = 0


def queue_project(
    ctx: Context,
    frame: pd.DataFrame,
    images: dict[str, Path],
    masks_root: Path,
    workspace: str,
    project: str,
    prompt: str,
    label: str,
    batch: str,
    top: int | None = None,
    challenger: Any = None,
    dry_run: Path | None = None,
    diverse: Any = None,
) -> ProjectQueue:
    """Pick the ``top`` most uncertain new photos for ``prompt`` (ties broken by disagreement with a
    ``challenger``), then upload them with their masks as pre-annotations (per-day limit), or
    write what would be queued to ``dry_run``."""
    from drywall_core.field import label_queue as lq

    k = ctx.settings.label_queue.per_run if top is None else top
    chosen = lq.select(ctx.store, frame, images, masks_root, workspace, project, prompt, k, challenger, diverse)
    items, before = chosen.items, chosen.before
    for name, of, sim in chosen.near_duplicates:
        what = "a photo already queued or trained on" if of == "known" else "a photo in this batch"
        ctx.reporter.info(f"label queue: {name} skipped, a near-duplicate of {what} (cosine {sim:.3f})")
    if dry_run is not None:  # the whole folder appears at once, or not at all
        from drywall_core.base.fsutil import naming_full_disk
        from drywall_core.data.sources.atomic import staged_dir

        with staged_dir(dry_run, "label-queue") as staged, naming_full_disk(dry_run):
            report = lq.write_dry_run(items, label, batch, staged)
        report.near_duplicates = [name for name, _, _ in chosen.near_duplicates]
        return ProjectQueue(workspace, project, prompt, report, len(items), before)
    report = lq.queue_for_labelling(
        ctx.store, ctx.roboflow_client(workspace, project), items, workspace, project, label, batch,
        ctx.settings.label_queue.per_day, retries=ctx.settings.pull_retries, backoff_s=ctx.settings.pull_backoff_s,
    )  # fmt: skip
    report.near_duplicates = [name for name, _, _ in chosen.near_duplicates]
    return ProjectQueue(workspace, project, prompt, report, len(items), before)


def label_queue_for(
    ctx: Context,
    model: str,
    images_dir: Path,
    workspace: str,
    project: str,
    prompt: str | None = None,
    top: int | None = None,
    batch: str | None = None,
    challenger: str | None = None,
    dry_run: Path | None = None,
) -> ProjectQueue:
    """``drywall label-queue``: predict ``prompt`` with ``model`` on a folder of photos and queue the
    most uncertain in one project (the project's dataset gives the prompt and the class)."""
    from drywall_core.field import label_queue as lq
    from drywall_core.field import predictions as fp
    from drywall_core.field.drift import IMAGE_EXTENSIONS

    spec = ctx.datasets.by_project(project)
    if spec is None and not prompt:
        raise InputError(f"project '{project}' is not in the dataset registry: pass --prompt")
    prompt = prompt or spec.prompt
    label = spec.class_name if spec else project
    if dry_run is not None:
        from drywall_core.data.sources.atomic import check_target

        check_target(dry_run, overwrite=False)
    if dry_run is None and not ctx.settings.roboflow_key():
        raise InputError("no Roboflow API key: set DRYWALL_ROBOFLOW_API_KEY or ROBOFLOW_API_KEY (or use --dry-run)")
    if not Path(images_dir).is_dir():
        raise InputError(f"{images_dir}: image folder not found")
    photos = fp.field_images(Path(images_dir), IMAGE_EXTENSIONS)
    if not photos:
        raise InputError(f"{images_dir}: no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    path = ctx.model_path(model)
    loaded = ctx.inference_model(path)
    version = str(loaded.manifest.get("version") or Path(path).name)
    other = ctx.inference_model(challenger) if challenger else None
    with tempfile.TemporaryDirectory(prefix="drywall-label-queue-") as tmp:
        ctx.reporter.info(f"label queue: predicting '{prompt}' on {len(photos)} photos")
        lines = [prompt] if ctx.datasets.measures_lines(prompt) else []
        run = fp.predict_field(
            loaded, photos, [prompt], Path(tmp), version, done=None, progress=False, lines=lines,
            min_area_px=ctx.settings.measure.min_area_px,
        )  # fmt: skip
        for item in run.skipped:
            ctx.reporter.warn(f"{item['image']}: cannot read image ({item['reason']}); skipped")
        images = {p.sha256: p.path for p in photos}
        return queue_project(
            ctx, run.frame, images, Path(tmp), workspace, project, prompt, label, batch or lq.default_batch(),
            top, other, dry_run, diversity_for(ctx, loaded, Path(path)),
        )  # fmt: skip


@dataclass
class FieldQueue:
    batch: str
    projects: list[ProjectQueue] = field(default_factory=list)
    skipped: str | None = None  # why nothing was queued

    def to_dict(self) -> dict[str, Any]:
        if self.skipped:
            return {"skipped": self.skipped, "projects": {}}
        return {
            "batch": self.batch,
            "projects": {
                f"{q.workspace}/{q.project}": {
                    "queued": [e["image"] for e in q.report.queued],
                    "already": q.report.already,
                    "over_limit": q.report.over_limit,
                    "near_duplicates": q.report.near_duplicates,
                    "failed": q.report.failed,
                }
                for q in self.projects
            },
        }


def challenger_after(ctx: Context, champion: str, dest: Path) -> Any:
    """The newest version published after the champion (a refused candidate), loaded for inference;
    None without one. Where two good models disagree, a label teaches the most."""
    newer = [v for v in ctx.models.versions() if v > champion]
    if not newer:
        return None
    ctx.reporter.info(f"label queue: ties broken by disagreement with challenger {newer[-1]}")
    return ctx.inference_model(ctx.models.download(newer[-1], Path(dest)))


def queue_field(ctx: Context, predicted: FieldOutcome, batch: str | None = None) -> FieldQueue:
    """After field predictions: each registered dataset's most uncertain new photos, queued in its
    Roboflow project (skipped, with the reason, when the queue is off, there is no key or nothing new)."""
    from drywall_core.field import label_queue as lq

    batch = batch or lq.default_batch()
    why = None
    if ctx.settings.label_queue.per_run == 0:
        why = "DRYWALL_LABEL_QUEUE__PER_RUN is 0"
    elif not ctx.settings.roboflow_key():
        why = "no Roboflow API key (DRYWALL_ROBOFLOW_API_KEY)"
    elif predicted.run.frame.empty:
        why = "no new field images"
    if why:
        ctx.reporter.markdown("label-queue", f"Label queue skipped: {md(why)}.", "images sent for labelling")
        ctx.reporter.info(f"label queue skipped: {why}")
        return FieldQueue(batch, skipped=why)
    frame, masks = predicted.run.frame, Path(predicted.run.out)
    challenger = challenger_after(ctx, predicted.version, masks.parent / "challenger")
    diverse = None
    if predicted.model_dir is not None and ctx.settings.label_queue.diverse:  # no model loaded when off
        diverse = diversity_for(ctx, ctx.inference_model(predicted.model_dir), predicted.model_dir)
    done = FieldQueue(batch)
    for spec in ctx.datasets.datasets.values():
        if spec.roboflow is None or spec.prompt not in set(frame["prompt"]):
            continue
        ws, proj = spec.roboflow.workspace, spec.roboflow.project
        done.projects.append(
            queue_project(ctx, frame, predicted.images, masks, ws, proj, spec.prompt, spec.class_name, batch,
                          challenger=challenger, diverse=diverse)
        )  # fmt: skip
    for q in done.projects:
        for name, reason in q.report.failed:
            ctx.reporter.warn(f"label queue {q.workspace}/{q.project}: {name} not queued ({reason})")
    lines = ["| project | prompt | queued | before | over limit | failed |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {md(q.workspace)}/{md(q.project)} | {md(q.prompt)} | {len(q.report.queued)} | {len(q.report.already)} | "
        f"{len(q.report.over_limit)} | {len(q.report.failed)} |"
        for q in done.projects
    ]
    ctx.reporter.markdown("label-queue", "\n".join(lines) + f"\n\nbatch {md(batch)}", "images sent for labelling")
    return done
