"""The use-case layer on its own: no Prefect server, no command line; the rules a stage holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from drywall_core.base.config import Settings
from drywall_core.stages.context import Context, MemoryEvents, QuietReporter


def _context(tmp_path: Path, **settings) -> Context:
    return Context(Settings(home=tmp_path / "home", mask_workers=1, **settings), QuietReporter(), MemoryEvents())


def _photos(src: Path, dest: Path, start: int, n: int) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.jpg"))[start : start + n]:
        shutil.copyfile(p, dest / p.name)
    return dest


def test_drift_compares_the_model_signals_a_reference_profile_records(
    drywall_export: Path, cracks_export: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A profile written with the model's signals compares them on the field photos; one written
    without them says so, instead of dropping the signals without a word."""
    from drywall_core.field.drift import write_reference_profile
    from drywall_core.model.runtime import load_for_inference
    from drywall_core.stages.field import DRIFT_EVENT, drift

    ctx = _context(tmp_path)
    model = load_for_inference(tiny_model_dir)
    train = sorted((drywall_export / "train").glob("*.jpg"))[:16]
    with_signals, without = tmp_path / "with.parquet", tmp_path / "without.parquet"
    write_reference_profile(train, with_signals, model=model, prompts=ctx.prompts)
    write_reference_profile(train, without)
    current = _photos(cracks_export / "valid", tmp_path / "field", 0, 12)

    on = drift(ctx, with_signals, current, tmp_path / "a", model, event_payload={"champion": "v1"})
    assert on.model_signals == "on"
    assert {"fg_fraction__segment_crack", "confidence__segment_taping_area"} <= set(on.summary["columns"])
    off = drift(ctx, without, current, tmp_path / "b", model)
    assert off.model_signals.startswith("not compared: the reference has no model signals")
    assert "fg_fraction__segment_crack" not in off.summary["columns"]
    assert any("not compared" in line for line in ctx.reporter.lines), "said, not silently dropped"
    # cracks photos against a drywall reference drift: the event carries the verdict and the caller's payload
    assert on.detected and off.detected
    sent = [e for e in ctx.events.sent if e.event == DRIFT_EVENT]
    assert len(sent) == 2 and sent[0].payload["champion"] == "v1" and sent[0].id == on.event_id
    assert sent[0].payload["drifted_share"] == on.summary["drifted_share"]


def test_no_drift_emits_nothing(drywall_export: Path, tmp_path: Path) -> None:
    from drywall_core.stages.field import drift

    ctx = _context(tmp_path)
    result = drift(ctx, drywall_export / "train", drywall_export / "valid", tmp_path / "o")
    assert not result.detected and result.event_id is None and ctx.events.sent == []
    assert result.model_signals == "off" and "drift-summary" in ctx.reporter.artifacts


def _champion(ctx: Context, artifact_dir: Path, tmp_path: Path, recorded_miou: float) -> str:
    """Publish ``artifact_dir`` as the champion, with per-prompt metrics recorded at promotion."""
    art = tmp_path / "champion-artifact"
    shutil.copytree(artifact_dir, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["metrics"] = {
        "per_prompt": {p: {"miou": recorded_miou, "mean_dice": recorded_miou} for p in ctx.prompts},
        "thresholds": {},
    }
    (art / "manifest.json").write_text(json.dumps(manifest))
    version = ctx.models.publish(art)["version"]
    ctx.models.promote(version, None)
    return version


def test_evaluate_champion_flags_and_emits_regressions(artifact_dir: Path, synthetic_samples, tmp_path: Path) -> None:
    from drywall_core.stages.release import REGRESSED_EVENT, evaluate_champion

    samples, specs = synthetic_samples
    val = [s for s in samples if s.side == "val"]
    ctx = _context(tmp_path)
    version = _champion(ctx, artifact_dir, tmp_path, recorded_miou=0.99)  # a random model cannot hold that
    result = evaluate_champion(ctx, val, specs, tmp_path / "work", run="r1")
    assert result.version == version and len(result.regressions) == 2
    assert all("when promoted" in r for r in result.regressions)
    (event,) = ctx.events.sent
    assert event.event == REGRESSED_EVENT and event.payload == {"version": version, "regressions": result.regressions}
    stored = json.loads(ctx.store.get_bytes(result.stored))
    assert stored["regressions"] == result.regressions and stored["flow_run_id"] == "r1"
    assert result.stored.startswith(f"{ctx.models.root}/evaluations/") and result.stored.endswith(f"-{version}.json")
    assert "REGRESSION" in ctx.reporter.artifacts["champion-evaluation-table"]

    calm = _context(tmp_path / "calm")
    _champion(calm, artifact_dir, tmp_path / "calm", recorded_miou=0.0)
    assert evaluate_champion(calm, val, specs, tmp_path / "calm-work").regressions == []
    assert calm.events.sent == [], "no regression, no event"


def test_evaluate_without_a_champion_says_so(synthetic_samples, tmp_path: Path) -> None:
    from drywall_core.stages.release import evaluate_champion

    samples, specs = synthetic_samples
    ctx = _context(tmp_path)
    assert evaluate_champion(ctx, samples, specs, tmp_path / "w").version is None
    assert ctx.reporter.lines == ["warning: no champion to evaluate"]


def test_judge_and_publish_refuses_emits_and_keeps_the_champion(
    artifact_dir: Path, synthetic_samples, tmp_path: Path
) -> None:
    """A refusal publishes the version, keeps the champion, audits, emits ``drywall.gate.refused``;
    a promotion moves the champion and emits ``drywall.model.promoted`` (prediction services load it
    at once). Each version carries its warm-up set: held-out photos and its own masks on them."""
    from drywall_core.release.warmup import WARMUP_FILE, check_warmup
    from drywall_core.stages.registry import PROMOTED_EVENT
    from drywall_core.stages.release import REFUSED_EVENT, judge_and_publish

    samples, specs = synthetic_samples
    val = [s for s in samples if s.side == "val"]
    ctx = _context(tmp_path, gate={"min_miou": 0, "min_dice": 0, "shadow_images": 0})
    first = judge_and_publish(ctx, artifact_dir, val, specs, tmp_path / "a")
    assert first.promoted and first.champion_before is None
    (promoted,) = ctx.events.sent
    assert promoted.event == PROMOTED_EVENT and promoted.payload == {"version": first.version, "previous": None,
                                                                     "action": "promote"}  # fmt: skip
    assert ctx.models.champion_version() == first.version
    files = ctx.models.show(first.version)["files"]
    photos = sorted(f for f in files if f.startswith("warmup-"))
    assert WARMUP_FILE in files and len(photos) == 4, files  # DRYWALL_SERVE__WARMUP_IMAGES
    copy = ctx.models.download(first.version, tmp_path / "copy")
    check = check_warmup(ctx.inference_model(copy), copy, 0.98)
    assert check.passed and check.cases == 4 * len(ctx.prompts), check
    ctx.events.sent.clear()
    again = judge_and_publish(ctx, artifact_dir, val, specs, tmp_path / "b", extra={"reason": "again"})
    assert not again.promoted and again.champion_before == first.version
    assert ctx.models.champion_version() == first.version, "a refusal never moves the champion"
    (event,) = ctx.events.sent
    assert event.event == REFUSED_EVENT and event.payload["version"] == again.version
    assert event.payload["champion"] == first.version and event.resource["drywall.regression"] == "false"
    assert ctx.models.show(again.version)["gate"]["promote"] is False
    assert ctx.models.audit_log()[-1]["action"] == "refuse"
    assert "REFUSE" in ctx.reporter.artifacts["retrain-gate"]
    assert again.decision["shadow"] == {"note": "off (DRYWALL_GATE__SHADOW_IMAGES=0)"}


@pytest.mark.parametrize("claimed_miou", [0.97])
def test_judge_refuses_a_claim_the_measurement_does_not_bear_out(
    artifact_dir: Path, synthetic_samples, tmp_path: Path, claimed_miou: float
) -> None:
    from drywall_core.stages.release import judge

    samples, specs = synthetic_samples
    val = [s for s in samples if s.side == "val"]
    ctx = _context(tmp_path, gate={"min_miou": 0, "min_dice": 0, "shadow_images": 0})
    measured = judge(ctx, artifact_dir, val, specs, tmp_path / "w").measured
    claimed = json.loads(json.dumps(measured))
    for d in claimed["datasets"].values():
        d["miou"] = claimed_miou
    decision = judge(ctx, artifact_dir, val, specs, tmp_path / "w2", claimed=claimed).decision
    assert not decision.promote and any("claimed metrics refused" in r for r in decision.reasons)


def test_an_unreachable_event_api_is_a_warning_not_a_failure(caplog) -> None:
    """The decision an event reports is recorded already (audit log, store): a down API loses the
    alert, said in the log, and the command still exits with the decision's own code."""
    import logging
    import socket

    from drywall_core.stages.context import HttpEvents

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with caplog.at_level(logging.WARNING, logger="drywall_core.stages"):
        sent = HttpEvents(f"http://127.0.0.1:{port}/api", timeout=2).emit(
            "drywall.gate.refused", {"prefect.resource.id": "drywall.model.m"}, {"version": "v1"}
        )
    assert sent is None
    assert "event drywall.gate.refused not sent" in caplog.text and "ConnectError" in caplog.text


def test_promote_and_rollback_announce_each_move_and_only_a_move(artifact_dir: Path, tmp_path: Path) -> None:
    """A hand promotion or a rollback returns what moved and emits ``drywall.model.promoted`` (the
    prediction services' wake-up); promoting the champion again moves nothing and emits nothing."""
    from drywall_core.stages import registry as ops

    ctx = _context(tmp_path)
    for v in ("va", "vb"):
        ctx.models.publish(artifact_dir, version=v)
    first = ops.promote(ctx, "va", "first")
    second = ops.promote(ctx, "vb", "second")
    same = ops.promote(ctx, "vb", "again")
    back = ops.rollback(ctx)
    assert (first.previous, second.previous, back.version, back.previous) == (None, "va", "va", "vb")
    assert same.unchanged and same.event_id is None and not second.unchanged
    sent = [(e.event, e.payload["version"], e.payload["action"]) for e in ctx.events.sent]
    assert sent == [(ops.PROMOTED_EVENT, "va", "manual-promote"), (ops.PROMOTED_EVENT, "vb", "manual-promote"),
                    (ops.PROMOTED_EVENT, "va", "rollback")]  # fmt: skip
    assert [m.event_id for m in (first, second, back)] == [e.id for e in ctx.events.sent]
