"""Judge and publish a candidate; evaluate the champion. One implementation for the retrain flow and
``drywall registry publish`` / ``drywall registry evaluate``.

Judging: the candidate and the champion are measured here, on the same held-out images (a metrics
file that came with the candidate is only a claim, checked against the measurement), both run on the
latest field photos (the shadow comparison), and the gate decides. Publishing: the candidate becomes
a new immutable version either way; the champion alias moves only on approval, compare-and-swap
against the alias the judgement saw; a refusal emits ``drywall.gate.refused``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from drywall_core.base.errors import InputError
from drywall_core.base.markup import md
from drywall_core.data.datasets import DatasetSpec
from drywall_core.data.samples import Sample
from drywall_core.release.gate import GateDecision, decide
from drywall_core.stages.context import Context

REFUSED_EVENT = "drywall.gate.refused"
REGRESSED_EVENT = "drywall.model.regressed"


@dataclass
class Champion:
    """The champion a judgement saw: its version, the alias etag (for compare-and-swap), a verified copy."""

    version: str
    etag: str
    path: Path


@dataclass
class Judgement:
    measured: dict[str, Any]  # the candidate's metrics, measured by the gate
    champion: Champion | None
    champion_metrics: dict[str, Any] | None
    shadow: dict[str, Any]
    decision: GateDecision
    warmup: list[Path] = field(default_factory=list)  # validation photos recorded with the version


@dataclass
class Published:
    version: str
    promoted: bool
    reason: str
    decision: dict[str, Any]
    champion_before: str | None
    event_id: str | None = None
    card: str = ""


def fetch_champion(ctx: Context, dest: Path) -> Champion | None:
    """A verified copy of the champion under ``dest``, with the alias etag; None without a champion."""
    current = ctx.models.champion()
    if current is None:
        return None
    alias, etag = current
    return Champion(alias["version"], etag, ctx.models.download(alias["version"], Path(dest)))


def measure(model: Path | str, val: Sequence[Sample], specs: dict[str, DatasetSpec]) -> dict[str, Any]:
    """Metrics of a model on held-out samples, as trained (fp32): what the gate compares."""
    from drywall_core.model.evaluate import evaluate
    from drywall_core.model.load import load_model

    return evaluate(load_model(model), val, specs, progress=False)


def shadow(ctx: Context, candidate: Path, champion: Champion | None, dest: Path) -> dict[str, Any]:
    """Candidate and champion on the latest field photos (no labels): how much would field masks change?"""
    from drywall_core.release.shadow import latest_field_images, shadow_compare

    s = ctx.settings
    if champion is None:
        return {"note": "no champion: nothing to compare with"}
    if s.gate.shadow_images == 0:
        return {"note": "off (DRYWALL_GATE__SHADOW_IMAGES=0)"}
    images = latest_field_images(s, s.gate.shadow_images, Path(dest))
    if not images:
        where = f"s3://{s.s3_bucket}/{s.field_images_prefix}" if s.s3_bucket else str(s.field_images_dir)
        ctx.reporter.info(f"shadow evaluation: no field images under {where}")
        return {"note": f"no field images under {where}: skipped"}
    result = shadow_compare(
        ctx.inference_model(candidate), ctx.inference_model(champion.path), images, ctx.prompts,
        s.gate.strong_disagreement_iou,
    )  # fmt: skip
    for prompt, row in result["prompts"].items():
        ctx.reporter.info(f"shadow '{prompt}': agreement {row['agreement']:.3f} on {row['images']} field images")
    return result


def judge(
    ctx: Context,
    candidate: Path,
    val: Sequence[Sample],
    specs: dict[str, DatasetSpec],
    work: Path,
    claimed: dict[str, Any] | None = None,
) -> Judgement:
    """Measure the candidate and the champion on ``val``, compare them on field photos, decide."""
    work = Path(work)
    ctx.reporter.info(f"gate: measuring the candidate on {len(val)} held-out images")
    measured = measure(candidate, val, specs)
    champion = fetch_champion(ctx, work / "champion")
    champion_metrics = None
    if champion:
        ctx.reporter.info(f"gate: measuring champion {champion.version} on the same images")
        champion_metrics = measure(champion.path, val, specs)
    seen = shadow(ctx, Path(candidate), champion, work / "shadow")
    decision = decide(measured, champion_metrics, ctx.settings.gate, seen, claimed=claimed)
    ctx.reporter.info(f"gate: {'PROMOTE' if decision.promote else 'REFUSE'} ({'; '.join(decision.reasons)})")
    warmup = warmup_photos(val, ctx.settings.serve.warmup_images)
    return Judgement(measured, champion, champion_metrics, seen, decision, warmup)


def warmup_photos(val: Sequence[Sample], n: int) -> list[Path]:
    """``n`` held-out photos for the version's warm-up set: taken in turn from each dataset, in a
    fixed order, so every prompt's data is represented and a re-run picks the same ones."""
    by_dataset: dict[str, list[Path]] = {}
    for x in sorted(val, key=lambda x: str(x.image)):
        if x.image not in by_dataset.setdefault(x.dataset, []):
            by_dataset[x.dataset].append(x.image)
    queues, picked = [list(v) for _, v in sorted(by_dataset.items())], []
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def publish(ctx: Context, candidate: Path, judgement: Judgement, extra: dict[str, Any] | None = None) -> Published:
    """Publish the candidate as a new version, settle the gate's decision, emit the refusal event."""
    from drywall_core.release.warmup import record_warmup
    from drywall_core.stages.registry import announce

    reg = ctx.models
    decision = judgement.decision.to_dict()
    with tempfile.TemporaryDirectory(prefix="drywall-warmup-") as tmp:
        warmup = []
        if judgement.warmup:
            ctx.reporter.info(f"warm-up set: {len(judgement.warmup)} held-out photos recorded with the version")
            warmup = record_warmup(ctx.inference_model(candidate), judgement.warmup, ctx.prompts, Path(tmp))
        record = reg.publish(Path(candidate), extra={**(extra or {}), "gate": decision}, extra_files=warmup)
    version = record["version"]
    before = judgement.champion.version if judgement.champion else None
    outcome = reg.settle(version, judgement.champion.etag if judgement.champion else None, decision)
    event_id = None
    if outcome["promoted"]:
        event_id = announce(ctx, {"version": version, "previous": before}, "promote").event_id
    else:
        regression = any("regresses" in r or "shadow agreement" in r for r in decision["reasons"])
        event_id = ctx.events.emit(
            REFUSED_EVENT,
            {"prefect.resource.id": f"drywall.model.{reg.name}", "drywall.regression": str(regression).lower()},
            {"version": version, "reasons": decision["reasons"], "champion": reg.champion_version()},
        )
    card = reg.card(version)
    ctx.reporter.markdown("model-card", card, f"MODEL_CARD.md of {version}")
    ctx.reporter.markdown(
        "retrain-gate", comparison_table(decision), f"candidate {version} vs champion {before or '(none)'}"
    )
    ctx.reporter.info(f"candidate {version} {'promoted' if outcome['promoted'] else 'refused'} ({outcome['reason']})")
    return Published(version, outcome["promoted"], outcome["reason"], decision, before, event_id, card)


def judge_and_publish(
    ctx: Context,
    candidate: Path,
    val: Sequence[Sample],
    specs: dict[str, DatasetSpec],
    work: Path,
    claimed: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Published:
    """:func:`judge`, then :func:`publish`: the whole promotion step."""
    return publish(ctx, candidate, judge(ctx, candidate, val, specs, work, claimed), extra)


def comparison_table(decision: dict[str, Any]) -> str:
    """Candidate beside champion per prompt, with the verdict: all of it is in the gate's decision."""
    lines = ["| prompt | candidate mIoU | candidate Dice | champion mIoU | champion Dice |", "|---|---|---|---|---|"]
    for row in decision["rows"]:
        champ = (
            f"{row['champion_miou']:.3f} | {row['champion_dice']:.3f}" if row["champion_miou"] is not None else "- | -"
        )
        lines.append(f"| {md(row['prompt'])} | {row['candidate_miou']:.3f} | {row['candidate_dice']:.3f} | {champ} |")
    verdict = "PROMOTE" if decision["promote"] else "REFUSE"
    lines += ["", f"**Gate: {verdict}**", ""] + [f"- {md(r)}" for r in decision["reasons"]]
    return "\n".join(lines)


# -- a `drywall train` run folder -------------------------------------------------------------

RUN_INPUTS = "run.json"


def record_run_inputs(out: Path, exports: list[Path], datasets: list[str], ctx: Context) -> None:
    """What publishing needs to judge a run like the flow does: its data and its split."""
    from drywall_core.base.fsutil import atomic_write_text

    inputs = {
        "exports": [str(Path(e).resolve()) for e in exports],
        "datasets": datasets,
        "split_seed": ctx.settings.split_seed,
        "val_fraction": ctx.settings.val_fraction,
    }
    atomic_write_text(Path(out) / RUN_INPUTS, json.dumps(inputs, indent=2))


def publish_run(ctx: Context, run_dir: Path, exports: list[Path] | None = None, reason: str = "") -> Published:
    """Judge and publish a finished ``drywall train`` run folder on its own validation images (the
    exports and split recorded in ``run.json``), unless ``exports`` names others."""
    from drywall_core.data.samples import collect_samples

    run_dir = Path(run_dir)
    artifact, metrics_file = run_dir / "model", run_dir / "eval" / "metrics.json"
    if not (artifact / "manifest.json").is_file() or not metrics_file.is_file():
        raise InputError(f"{run_dir}: not a finished `drywall train` run (model/manifest.json, eval/metrics.json)")
    inputs_file = run_dir / RUN_INPUTS
    inputs = json.loads(inputs_file.read_text()) if inputs_file.is_file() else {}
    if not exports and not inputs.get("exports"):
        raise InputError(f"{inputs_file}: missing; pass --export so the gate measures the run on known images")
    recorded = not exports  # the run's own data and split, unless the caller names other exports
    split = {k: inputs[k] for k in ("split_seed", "val_fraction") if recorded and k in inputs}
    paths = [Path(e) for e in inputs["exports"]] if recorded else list(exports or [])
    samples, specs = collect_samples(
        paths, ctx.with_settings(**split).settings, inputs.get("datasets") if recorded else None
    )
    val = [x for x in samples if x.side == "val"]
    claimed = json.loads(metrics_file.read_text())
    extra = {"run_dir": str(run_dir.resolve()), "reason": reason}
    with tempfile.TemporaryDirectory(prefix="drywall-publish-") as tmp:
        return judge_and_publish(ctx, artifact, val, specs, Path(tmp), claimed=claimed, extra=extra)


# -- the champion, evaluated again on today's data --------------------------------------------


@dataclass
class ChampionEvaluation:
    version: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    regressions: list[str] = field(default_factory=list)
    stored: str | None = None  # the evaluation's key in the artifact store
    event_id: str | None = None
    reports: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def regressions(current: dict[str, Any], recorded: dict[str, Any], tolerance: float) -> list[str]:
    """Prompts whose mIoU fell more than ``tolerance`` below the metrics recorded at promotion."""
    out = []
    for d in current["datasets"].values():
        before = recorded.get(d["prompt"])
        if before and d["miou"] < before["miou"] - tolerance:
            out.append(f"'{d['prompt']}': mIoU {d['miou']:.3f} vs {before['miou']:.3f} when promoted")
    return out


def evaluation_key(ctx: Context, version: str) -> str:
    """``<registry>/evaluations/<UTC time>-<version>.json``: one per evaluation, never overwritten."""
    from drywall_core.release.registry import now

    return f"{ctx.models.root}/evaluations/{now().replace(':', '')}-{version}.json"


def evaluate_champion(
    ctx: Context, val: Sequence[Sample], specs: dict[str, DatasetSpec], work: Path, run: str = "local"
) -> ChampionEvaluation:
    """The champion on today's held-out images: reports, the evaluation stored beside the model,
    Evidently monitoring, and ``drywall.model.regressed`` when a prompt fell below its promotion mark."""
    from drywall_core.field.monitoring import record_evaluation
    from drywall_core.model.evaluate import evaluate, write_reports
    from drywall_core.model.load import load_model

    work = Path(work)
    champion = fetch_champion(ctx, work / "champion")
    if champion is None:
        ctx.reporter.warn("no champion to evaluate")
        return ChampionEvaluation(None)
    ctx.reporter.info(f"evaluating champion {champion.version} on {len(val)} held-out images")
    loaded = load_model(champion.path)
    metrics = evaluate(loaded, val, specs, progress=False)
    reports = write_reports(loaded, val, specs, metrics, work / "eval")
    recorded = json.loads((champion.path / "manifest.json").read_text()).get("metrics", {}).get("per_prompt", {})
    flagged = regressions(metrics, recorded, ctx.settings.gate.max_regression)
    key = evaluation_key(ctx, champion.version)
    body = {**metrics, "regressions": flagged, "version": champion.version, "flow_run_id": run}
    ctx.store.put_bytes(key, json.dumps(body, default=str).encode())
    ctx.reporter.link("champion-evaluation", ctx.store.link(key), "champion evaluation")
    meta = {"model_version": champion.version, "run": run}
    monitor(ctx, "champion evaluation", lambda where, model, ps: record_evaluation(where, model, ps, metrics, meta))
    rows = "\n".join(
        f"| {md(d['prompt'])} | {d['miou']:.3f} | {recorded.get(d['prompt'], {}).get('miou', float('nan')):.3f} |"
        for d in metrics["datasets"].values()
    )
    verdict = "REGRESSION: " + md("; ".join(flagged)) if flagged else "no regression"
    ctx.reporter.markdown(
        "champion-evaluation-table",
        f"| prompt | mIoU now | mIoU at promotion |\n|---|---|---|\n{rows}\n\n**{verdict}**",
        f"champion {champion.version}",
    )
    event_id = None
    if flagged:
        event_id = ctx.events.emit(
            REGRESSED_EVENT,
            {"prefect.resource.id": f"drywall.model.{ctx.models.name}"},
            {"version": champion.version, "regressions": flagged},
        )
    return ChampionEvaluation(
        champion.version, metrics, flagged, key, event_id, {k: str(v) for k, v in reports.items()}
    )


def monitor(ctx: Context, what: str, add: Any) -> str | None:
    """Add a run to the model's Evidently project (``DRYWALL_MONITORING_TARGET``); an unreachable
    workspace is a warning, not a failure: the stage's own result is already stored."""
    s = ctx.settings
    try:
        run_id = add(s.monitoring_target, s.model_name, ctx.prompts)
    except Exception as exc:  # noqa: BLE001 - monitoring must not undo a finished stage
        ctx.reporter.warn(f"{what} not added to Evidently at {s.monitoring_target}: {type(exc).__name__}: {exc}")
        return None
    ctx.reporter.info(f"{what} added to Evidently project '{s.model_name}' at {s.monitoring_target}")
    return run_id
