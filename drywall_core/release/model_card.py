"""MODEL_CARD.md: what a published version is, what it was trained on, how good it is, where not to trust it.

Rendered from the version's own record (artifact manifest + what the publishing run added: data
lineage, resolved settings, gate decision) and its ``metrics.json``, so the card can never say
something the registry does not hold.
"""

from __future__ import annotations

from typing import Any

from drywall_core.base.markup import md

CARD_FILE = "MODEL_CARD.md"

INTENDED_USE = """\
Text-prompted binary segmentation of interior drywall photos for construction QA: "segment crack"
(cracks in drywall, plaster and joint compound) and "segment taping area" (taped or mudded drywall
joints). The masks support a human inspector: they point at where to look and measure extents; they
are not a structural assessment and must not gate safety decisions on their own."""

KNOWN_LIMITS = """\
- Taping areas are learned from weak box labels (the whole bounding box counts as foreground, BCE
  only), so "segment taping area" masks are blocky and over-cover the joint; Dice on that prompt
  is measured against boxes, not true joint outlines.
- The model sees images at 352 x 352: hairline cracks one or two pixels wide in a 12 MP photo are
  thinner than a model pixel and are under-segmented or missed; photograph cracks close up.
- Only the decoder is fine-tuned; the CLIP backbone is frozen. Lighting, camera or surface types far
  from the training snapshots reduce quality: watch the drift report and the field predictions'
  uncertainty before trusting a new site.
- Thresholds are chosen per prompt on the validation split; prompts other than the trained synonyms
  are not evaluated."""


def _f(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, int | float) else "-"


def _data_section(record: dict[str, Any]) -> list[str]:
    lines = ["## Training data", ""]
    lineage = record.get("lineage") or []
    if not lineage:
        lines.append("Not recorded (published from a local run folder).")
        return [*lines, ""]
    lines += [
        "| dataset | snapshot | source | train / val images | validation |",
        "|---|---|---|---|---|",
    ]
    for item in lineage:
        src = item.get("source") or {}
        if src.get("source") == "roboflow":
            where = f"Roboflow {md(src.get('workspace'))}/{md(src.get('project'))} v{md(src.get('version'))}"
        else:
            where = md(src.get("source") or "local export")
        v = item.get("validation") or {}
        splits = v.get("splits") or []
        checks = (
            ("passed" if v.get("success") else "FAILED")
            + f" (Great Expectations; {sum(x['images'] for x in splits)} images,"
            + f" {sum(x['annotations'] for x in splits)} annotations)"
            if splits
            else "passed (gated at ingest)"
        )
        counts = item.get("counts") or {}
        lines.append(
            f"| {md(item.get('dataset'))} | `{_hex(item.get('snapshot'))[:16]}` | {where} | "
            f"{counts.get('train_images', '-')} / {counts.get('val_images', '-')} | {checks} |"
        )
    return [*lines, ""]


def _hex(value: object) -> str:
    """A snapshot id as shown in a code span: hex digits only (anything else is dropped)."""
    return "".join(c for c in str(value or "") if c in "0123456789abcdef")


def _metrics_section(metrics: dict[str, Any] | None) -> list[str]:
    lines = ["## Evaluation (validation split)", ""]
    if not metrics:
        return [*lines, "No metrics recorded.", ""]
    lines += [
        "| prompt | labels | images | mIoU | Dice | boundary F1 | threshold | mIoU at threshold | synonym range |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sweeps = []
    for d in metrics.get("datasets", {}).values():
        spread = d.get("robustness_spread") or {}
        lines.append(
            f"| {md(d['prompt'])} | {md(d.get('label_strength', '-'))} | {d.get('images', '-')} | "
            f"{_f(d.get('miou'))} | "
            f"{_f(d.get('mean_dice'))} | {_f(d.get('boundary_f1'))} | {_f(d.get('best_threshold'), 2)} | "
            f"{_f(d.get('miou_at_best_threshold'))} | {_f(spread.get('min'))}-{_f(spread.get('max'))} |"
        )
        sweep = d.get("sweep") or {}
        if sweep:
            sweeps.append(f"- {md(d['prompt'])}: " + ", ".join(f"{t}: {_f(v)}" for t, v in sweep.items()))
    overall = metrics.get("overall", {})
    lines += ["", f"Overall: mIoU {_f(overall.get('miou'))}, Dice {_f(overall.get('mean_dice'))}.", ""]
    if sweeps:
        lines += ["Threshold sweep (mIoU by probability cut):", "", *sweeps, ""]
    robust = [
        f"- {md(d['prompt'])}: "
        + ", ".join(f'"{md(p)}" {_f(v)}' for p, v in (d.get("prompt_robustness") or {}).items())
        for d in metrics.get("datasets", {}).values()
        if d.get("prompt_robustness")
    ]
    if robust:
        lines += ["Prompt robustness (mIoU per synonym):", "", *robust, ""]
    return lines + _measurement_section(metrics)


def _measurement_section(metrics: dict[str, Any]) -> list[str]:
    """How far the predicted crack measurements are from the ground truth's (crack datasets)."""
    rows = [d for d in metrics.get("datasets", {}).values() if d.get("measurement_error")]
    if not rows:
        return []
    lines = [
        "Crack measurements, predicted against ground truth (validation photos):",
        "",
        "| prompt | images | true cracks / photo | count MAE | true length px | length MAE px | median length error "
        "| widest MAE px |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in rows:
        e = d["measurement_error"]
        rel = e.get("length_rel_error_median")
        lines.append(
            f"| {md(d['prompt'])} | {e['images']} | {_f(e['true_cracks_mean'], 2)} | {_f(e['count_mae'], 2)} | "
            f"{_f(e['true_length_px_mean'], 1)} | {_f(e['length_mae_px'], 1)} | "
            f"{'-' if rel is None else f'{100 * rel:.0f}%'} | {_f(e['max_width_mae_px'], 2)} |"
        )
    return [*lines, ""]


def _gate_section(record: dict[str, Any]) -> list[str]:
    gate = record.get("gate")
    lines = ["## Promotion gate", ""]
    if not gate:
        return [*lines, "No gate decision recorded.", ""]
    verdict = "PROMOTE" if gate.get("promote") else "REFUSE"
    lines += [
        f"**{verdict}** (candidate mean mIoU {_f(gate.get('candidate_miou'))}, champion "
        f"{_f(gate.get('champion_miou'))})",
        "",
    ]
    lines += [f"- {md(r)}" for r in gate.get("reasons", [])]
    shadow = gate.get("shadow") or {}
    lines += ["", "Shadow evaluation on field images (candidate vs champion, no labels):", ""]
    if shadow.get("prompts"):
        lines += ["| prompt | images | mean mask IoU | strong disagreement |", "|---|---|---|---|"]
        for prompt, row in shadow["prompts"].items():
            lines.append(
                f"| {md(prompt)} | {row['images']} | {_f(row['agreement'])} | {row['strong_disagreement_share']:.0%} |"
            )
    else:
        lines.append(f"- {md(shadow.get('note') or 'not run')}")
    return [*lines, ""]


def render_card(record: dict[str, Any], metrics: dict[str, Any] | None = None) -> str:
    """The card of one version, from its registry record and its metrics.json."""
    training = record.get("training") or {}
    cfg = training.get("config") or (record.get("settings") or {}).get("train") or {}
    settings = record.get("settings") or {}
    profile_rows = (record.get("drift_reference") or {}).get("images")
    lines = [
        f"# Model card: {record.get('model_name', 'clipseg-drywall')} {record.get('version', '')}".rstrip(),
        "",
        f"Published {record.get('published_at', '-')}; code {record.get('code_version', '-')}.",
        "",
        "## Model",
        "",
        f"- Base model: {md(record.get('base_model', '-'))} at revision {md(record.get('base_revision', '-'))}"
        " (frozen CLIP backbone); this version carries only the fine-tuned decoder.",
        f"- Prompts: {', '.join(md(p) for p in (record.get('metrics') or {}).get('per_prompt', {})) or '-'}",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        *_data_section(record),
        "## Training",
        "",
        f"- Profile: {md(settings.get('profile') or 'production defaults')}",
        f"- Config: epochs {cfg.get('epochs', '-')}, batch {cfg.get('batch_size', '-')}, lr {cfg.get('lr', '-')},"
        f" weight decay {cfg.get('weight_decay', '-')}, weak-label weight {cfg.get('weak_weight', '-')},"
        f" activation cache {cfg.get('cache_dtype', '-')}, flips {cfg.get('flip', '-')}, seed {cfg.get('seed', '-')}",
        f"- Ran {training.get('epochs_run', '-')} epochs (best {training.get('best_epoch', '-')},"
        f" early stop: {training.get('stopped_early', '-')}) on {training.get('train_images', '-')} training and"
        f" {training.get('val_images', '-')} validation images",
        f"- Wall time {_f(training.get('wall_seconds'), 1)} s on {md(training.get('device', '-'))}"
        f" ({md(training.get('device_name', '-'))})",
        f"- Split: seed {settings.get('split_seed', '-')}, validation fraction {settings.get('val_fraction', '-')}",
        "",
        *_metrics_section(metrics),
        *_gate_section(record),
        "## Drift reference",
        "",
        "`reference_profile.parquet` (image features of the training images"
        + (f", {profile_rows} rows" if profile_rows else "")
        + "): field images are compared against it by the drift flow."
        if "reference_profile.parquet" in (record.get("files") or {})
        else "No drift reference profile in this version.",
        "",
        "## Known limits",
        "",
        KNOWN_LIMITS,
        "",
    ]
    return "\n".join(lines)
