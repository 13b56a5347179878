"""The promotion gate on hand-made metrics."""

from __future__ import annotations

from drywall_core.base.config import GateConfig
from drywall_core.release.gate import decide


def metrics(**per_prompt: tuple[float, float]) -> dict:
    return {
        "datasets": {p: {"prompt": p.replace("_", " "), "miou": m, "mean_dice": d} for p, (m, d) in per_prompt.items()}
    }


CFG = GateConfig(min_miou=0.2, min_dice=0.3, max_regression=0.02, min_improvement=0.01)


def test_first_candidate_promoted_when_above_floors() -> None:
    d = decide(metrics(segment_crack=(0.4, 0.5), segment_taping_area=(0.6, 0.7)), None, CFG)
    assert d.promote and d.champion_miou is None
    assert "no champion" in d.reasons[0]


def test_floor_refuses() -> None:
    d = decide(metrics(segment_crack=(0.1, 0.5), segment_taping_area=(0.6, 0.2)), None, CFG)
    assert not d.promote
    assert any("'segment crack': mIoU 0.100 below floor 0.200" in r for r in d.reasons)
    assert any("'segment taping area': mean Dice 0.200 below floor 0.300" in r for r in d.reasons)


def test_better_mean_but_one_prompt_regresses_is_refused() -> None:
    champ = metrics(segment_crack=(0.40, 0.5), segment_taping_area=(0.50, 0.6))
    cand = metrics(segment_crack=(0.37, 0.5), segment_taping_area=(0.70, 0.8))
    d = decide(cand, champ, CFG)
    assert not d.promote
    assert any("regresses" in r and "segment crack" in r for r in d.reasons)


def test_improvement_margin() -> None:
    champ = metrics(segment_crack=(0.40, 0.5))
    assert not decide(metrics(segment_crack=(0.405, 0.5)), champ, CFG).promote
    d = decide(metrics(segment_crack=(0.42, 0.5)), champ, CFG)
    assert d.promote and d.champion_miou == 0.40
    assert d.rows[0]["champion_miou"] == 0.40 and d.rows[0]["candidate_miou"] == 0.42


def _shadow(agreement: float) -> dict:
    row = {"images": 20, "agreement": agreement, "strong_disagreement_share": 0.1}
    return {"images": 20, "prompts": {"segment crack": row}}


def test_shadow_agreement_is_reported_and_only_refuses_below_an_explicit_floor() -> None:
    champ = metrics(segment_crack=(0.40, 0.5))
    better = metrics(segment_crack=(0.45, 0.55))
    d = decide(better, champ, CFG, _shadow(0.30))  # the floor is off by default: reported, not judged
    assert d.promote and any("shadow: 'segment crack' agreement 0.300 with the champion on 20" in r for r in d.reasons)
    strict = CFG.model_copy(update={"min_shadow_agreement": 0.8})
    refused = decide(better, champ, strict, _shadow(0.30))
    assert not refused.promote and any(
        "shadow agreement 0.300" in r and "below the floor 0.800" in r for r in refused.reasons
    )
    assert decide(better, champ, strict, _shadow(0.85)).promote
    quiet = decide(better, champ, strict, {"note": "no field images under /x: skipped"})
    assert quiet.promote and "shadow: no field images under /x: skipped" in quiet.reasons
