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

from drywall_core.base.config import get_settings, resolve_train_config
from drywall_core.base.markup import md_fence
from drywall_core.base.storage import LocalStore, store_from_settings
from drywall_core.release.candidates import candidate_staged
from drywall_core.stages.train import plan_retrain, recorded_settings
from flows.common import Source, run_dir
from flows.ingest import ingest
from flows.remote import run_remote
from flows.train import train_flow
from tasks.artifacts import image, link, markdown
from tasks.context import flow_context
from tasks.model import fetch_candidate_task
from tasks.release import judge_and_publish_task


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
    ctx = flow_context()  # the stages report to this run's log and artifacts
    resolved = recorded_settings(ctx, base_model, train_config, profile)
    markdown(md_fence(json.dumps(resolved, indent=2), "json"), "retrain-settings", "settings this run resolved")
    plan = plan_retrain(ctx, snapshots, base_model, train_config, force)
    reg = ctx.models
    if not plan.trains:
        markdown(plan.nothing_new_note(), "retrain-nothing-new", "why this run trained nothing")
        return {
            "version": None,
            "promoted": False,
            "reason": "nothing new",
            "champion": plan.champion,
            "trained": False,
        }
    trained_from = plan.trained_from
    work = run_dir("retrain")
    staging = str(flow_run.get_id() or f"local-{uuid.uuid4().hex[:12]}")
    _train(snapshots, base_model, train_config, staging, train_deployment)
    result = fetch_candidate_task(staging, str(work / "candidate"))

    lineage = [{k: r.get(k) for k in ("dataset", "snapshot", "uri", "counts", "source", "validation")} for r in records]
    extra = {
        "lineage": lineage,
        "flow_run_id": str(flow_run.get_id()),
        "trained_from": trained_from,
        "settings": resolved,
        "staging": result["uri"],
    }
    # both models measured by the gate, on the same held-out images: the staged metrics are only a claim
    published = judge_and_publish_task(result["artifact"], snapshots, str(work / "gate"), result["metrics"], extra)
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

    return {
        "version": published["version"],
        "promoted": published["promoted"],
        "reason": published["reason"],
        "champion": f"{reg.store.url}/{reg.alias_key}",
        "candidate_metrics": result["overall"],
        "staging": result["uri"],
        "previous_champion": published["champion_before"],
        "trained": True,
    }
