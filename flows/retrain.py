"""Retrain: ingest -> activation cache -> train -> evaluate -> gate -> publish.

The candidate and the champion are evaluated on the same held-out images; the candidate is
published as a new immutable version either way, and the champion alias moves only when the
gate approves (compare-and-swap against the alias the run saw). Every decision lands in the
registry's audit log and in the run's artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.runtime import flow_run

from drywall_core.config import get_settings, resolve_train_config
from drywall_core.snapshots import nothing_new
from drywall_core.storage import LocalStore
from flows.common import Source, run_dir
from flows.ingest import ingest
from flows.train import train_flow
from tasks.artifacts import image, link, markdown, upload_report
from tasks.data import trained_from_task
from tasks.model import evaluate_task
from tasks.registry import fetch_champion_task, gate_task, promote_task, publish_task, registry


def comparison_table(decision: dict[str, Any]) -> str:
    """Candidate beside champion per prompt, with the verdict: all of it is in the gate's decision."""
    lines = ["| prompt | candidate mIoU | candidate Dice | champion mIoU | champion Dice |", "|---|---|---|---|---|"]
    for row in decision["rows"]:
        champ = (
            f"{row['champion_miou']:.3f} | {row['champion_dice']:.3f}" if row["champion_miou"] is not None else "- | -"
        )
        lines.append(f"| {row['prompt']} | {row['candidate_miou']:.3f} | {row['candidate_dice']:.3f} | {champ} |")
    verdict = "PROMOTE" if decision["promote"] else "REFUSE"
    lines += ["", f"**Gate: {verdict}**", ""] + [f"- {r}" for r in decision["reasons"]]
    return "\n".join(lines)


def _train(
    exports: list[str],
    datasets: list[str],
    base_model: str,
    out: Path,
    overrides: dict | None,
    train_deployment: str | None,
) -> dict[str, Any]:
    params = {
        "exports": exports,
        "datasets": datasets,
        "base_model": base_model,
        "out": str(out),
        "overrides": overrides or {},
    }
    if not train_deployment:
        return train_flow(**params)
    get_run_logger().info("training on deployment %s", train_deployment)
    run = run_deployment(train_deployment, parameters=params, timeout=None)
    if not run.state or not run.state.is_completed():
        raise RuntimeError(f"training run {run.id} ended {run.state.name if run.state else 'without a state'}")
    return run.state.result()


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

    Nothing new -- the same dataset snapshots, base model and training config as the champion's --
    means no training and nothing published (the run still completes); ``force`` trains anyway.
    """
    settings = get_settings()
    base_model = base_model or settings.base_model
    records = ingest(sources)
    exports, datasets = [r["export"] for r in records], [r["dataset"] for r in records]
    # the whole recipe travels as a parameter, so a GPU host trains with exactly what is recorded here
    train_config = resolve_train_config(settings.train, profile or settings.train_profile, overrides).model_dump()
    trained_from = trained_from_task(exports, datasets, base_model, train_config)
    reg = registry()
    current = reg.champion_version()
    differs = nothing_new(trained_from, reg.show(current) if current else None)
    if not differs and not force:
        note = (
            f"Nothing new: champion {current} was trained on the same dataset snapshots, base model and "
            "training config. No training, nothing published (pass force=true to retrain anyway).\n\n"
            + "\n".join(f"- {name}: `{sid[:16]}`" for name, sid in trained_from["snapshots"].items())
        )
        get_run_logger().info("retrain: nothing new since champion %s; not training", current)
        markdown(note, "retrain-nothing-new", "why this run trained nothing")
        return {"version": None, "promoted": False, "reason": "nothing new", "champion": current, "trained": False}
    get_run_logger().info("retrain: training (%s)", "forced" if not differs else "; ".join(differs))
    work = run_dir("retrain")
    result = _train(exports, datasets, base_model, work / "train", train_config, train_deployment)

    champion = fetch_champion_task(str(work / "champion"))
    champ_metrics = (
        evaluate_task(champion["path"], exports, str(work / "champion-eval"), datasets) if champion else None
    )
    decision = gate_task(result["metrics"], champ_metrics)
    lineage = [{"export": r["export"], "dataset": r["dataset"], "counts": r["counts"]} for r in records]
    record = publish_task(
        result["artifact"],
        {"lineage": lineage, "flow_run_id": str(flow_run.get_id()), "gate": decision, "trained_from": trained_from},
    )
    outcome = promote_task(record["version"], champion["etag"] if champion else None, decision)

    run_id = str(flow_run.get_id() or "local")
    markdown(
        comparison_table(decision),
        "retrain-gate",
        f"candidate {record['version']} vs champion {champion['version'] if champion else '(none)'}",
    )
    urls = {name: upload_report(Path(result[name]), run_id) for name in ("metrics", "table", "grid", "curve")}
    link(urls["metrics"], "candidate metrics.json", "retrain-metrics", "per-prompt metrics, sweep, robustness")
    link(urls["curve"], "training curve", "retrain-training-curve")
    if isinstance(reg.store, LocalStore):  # a browser will not render file:// images
        link(urls["grid"], "best/worst predictions (PNG)", "retrain-best-worst")
    else:  # presigned S3 URL
        image(urls["grid"], "retrain-best-worst", "best and worst validation predictions (image | truth | prediction)")

    summary = {
        "version": record["version"],
        "promoted": outcome["promoted"],
        "reason": outcome["reason"],
        "champion": f"{reg.store.url}/{reg.alias_key}",
        "candidate_metrics": result["metrics"],
        "reports": str(work),
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
