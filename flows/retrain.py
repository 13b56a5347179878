"""Retrain: ingest (snapshots) -> train (staged candidate) -> evaluate champion -> gate -> publish.

The candidate and the champion are evaluated on the same held-out images; the candidate is
published as a new immutable version either way, and the champion alias moves only when the
gate approves (compare-and-swap against the alias the run saw). Every decision lands in the
registry's audit log and in the run's artifacts.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from drywall_core.candidates import candidate_staged
from drywall_core.config import get_settings, resolve_train_config
from drywall_core.markup import md, md_fence
from drywall_core.model import base_fingerprint
from drywall_core.snapshots import nothing_new, snapshots_of, training_identity
from drywall_core.storage import LocalStore, store_from_settings
from flows.common import Source, run_dir
from flows.ingest import ingest
from flows.remote import run_remote
from flows.train import train_flow
from tasks.artifacts import image, link, markdown
from tasks.model import evaluate_task, fetch_candidate_task, shadow_task
from tasks.registry import fetch_champion_task, gate_task, promote_task, publish_task, registry


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


def _train(
    snapshots: list[str],
    base_model: str,
    train_config: dict[str, Any],
    staging: str,
    train_deployment: str | None,
) -> None:
    """Run the training stage inline, or on another pool through its deployment; it stages the candidate.

    A rerun of this flow run (a retry, or Retry in the UI) finds the candidate its first attempt
    staged and does not train again. On another pool, a crashed training run is started again
    (it resumes from the staged epoch checkpoint) and an unreachable API is waited out.
    """
    settings = get_settings()
    if candidate_staged(store_from_settings(settings), staging):
        get_run_logger().info("a candidate is already staged under staging/%s: gating it, not training again", staging)
        return
    params = {"snapshots": snapshots, "base_model": base_model, "train_config": train_config, "staging": staging}
    if not train_deployment:
        train_flow(**params)
        return
    get_run_logger().info("training on deployment %s (staging %s)", train_deployment, staging)
    run_remote(train_deployment, params, settings.train_crash_retries, settings.api_outage_tolerance_s)


def recorded_settings(base_model: str, train_config: dict[str, Any], profile: str | None) -> dict[str, Any]:
    """Every setting that changes the result of a retrain, as resolved for this run."""
    s = get_settings()
    return {
        "base_model": base_model,
        "profile": profile,
        "train": train_config,
        "gate": s.gate.model_dump(),
        "split_seed": s.split_seed,
        "val_fraction": s.val_fraction,
    }


@flow(name="retrain", log_prints=True)
def retrain(
    sources: list[Source] | None = None,
    base_model: str | None = None,
    overrides: dict[str, Any] | None = None,
    train_deployment: str | None = None,
    force: bool = False,
    profile: str | None = None,
) -> dict[str, Any]:
    """Retrain on fresh data and promote the candidate only if it beats the champion.

    Stages hand off through the artifact store: ingest returns snapshot references, training
    (inline, or ``train_deployment`` on the gpu pool) stages its candidate under
    ``staging/<this run's id>/``, and this flow gates and publishes from there. Nothing new -- the
    same dataset snapshots, base model and training config as the champion's -- means no training
    and nothing published (the run still completes); ``force`` trains anyway.
    """
    settings = get_settings()
    base_model = base_model or settings.base_model
    profile = profile or settings.train_profile
    records = ingest(sources)
    snapshots = [r["ref"] for r in records]
    # the whole recipe travels as a parameter, so a GPU host trains with exactly what is recorded here
    train_config = resolve_train_config(settings.train, profile, overrides).model_dump()
    resolved = recorded_settings(base_model, train_config, profile)
    markdown(md_fence(json.dumps(resolved, indent=2), "json"), "retrain-settings", "settings this run resolved")
    trained_from = training_identity(snapshots_of(snapshots), base_fingerprint(base_model), train_config)
    reg = registry()
    current = reg.champion_version()
    differs = nothing_new(trained_from, reg.show(current) if current else None)
    if not differs and not force:
        note = (
            f"Nothing new: champion {current} was trained on the same dataset snapshots, base model and "
            "training config. No training, nothing published (pass force=true to retrain anyway).\n\n"
            + "\n".join(f"- {md(name)}: `{sid[:16]}`" for name, sid in trained_from["snapshots"].items())
        )
        get_run_logger().info("retrain: nothing new since champion %s; not training", current)
        markdown(note, "retrain-nothing-new", "why this run trained nothing")
        return {"version": None, "promoted": False, "reason": "nothing new", "champion": current, "trained": False}
    get_run_logger().info("retrain: training (%s)", "forced" if not differs else "; ".join(differs))
    work = run_dir("retrain")
    staging = str(flow_run.get_id() or f"local-{uuid.uuid4().hex[:12]}")
    _train(snapshots, base_model, train_config, staging, train_deployment)
    result = fetch_candidate_task(staging, str(work / "candidate"))

    champion = fetch_champion_task(str(work / "champion"))
    # both models measured here, on the same held-out images: the staged metrics are only a claim
    measured = evaluate_task(result["artifact"], snapshots, str(work / "candidate-eval"))
    champ_metrics = evaluate_task(champion["path"], snapshots, str(work / "champion-eval")) if champion else None
    shadow = shadow_task(result["artifact"], champion, str(work / "shadow"))
    decision = gate_task(measured, champ_metrics, shadow, claimed_metrics=result["metrics"])
    lineage = [{k: r.get(k) for k in ("dataset", "snapshot", "uri", "counts", "source", "validation")} for r in records]
    record = publish_task(
        result["artifact"],
        {
            "lineage": lineage,
            "flow_run_id": str(flow_run.get_id()),
            "gate": decision,
            "trained_from": trained_from,
            "settings": resolved,
            "staging": result["uri"],
        },
    )
    outcome = promote_task(record["version"], champion["etag"] if champion else None, decision)
    markdown(reg.card(record["version"]), "model-card", f"MODEL_CARD.md of {record['version']}")

    markdown(
        comparison_table(decision),
        "retrain-gate",
        f"candidate {record['version']} vs champion {champion['version'] if champion else '(none)'}",
    )
    urls = result["links"]  # the staged reports, straight from the store
    link(
        urls["eval/metrics.json"], "candidate metrics.json", "retrain-metrics", "per-prompt metrics, sweep, robustness"
    )
    link(urls["training_curve.png"], "training curve", "retrain-training-curve")
    if isinstance(reg.store, LocalStore):  # a browser will not render file:// images
        link(urls["eval/best_worst.png"], "best/worst predictions (PNG)", "retrain-best-worst")
    else:  # presigned S3 URL
        image(
            urls["eval/best_worst.png"],
            "retrain-best-worst",
            "best and worst validation predictions (image | truth | prediction)",
        )

    summary = {
        "version": record["version"],
        "promoted": outcome["promoted"],
        "reason": outcome["reason"],
        "champion": f"{reg.store.url}/{reg.alias_key}",
        "candidate_metrics": result["overall"],
        "staging": result["uri"],
        "previous_champion": champion["version"] if champion else None,
        "trained": True,
    }
    get_run_logger().info(
        "retrain: candidate %s %s (%s)",
        record["version"],
        "promoted" if outcome["promoted"] else "refused",
        outcome["reason"],
    )
    return summary
