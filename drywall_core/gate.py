"""The promotion gate: a candidate replaces the champion only when it is good and better.

Rules (all must hold), on metrics of both models measured on the *same* validation images:
1. every prompt's mIoU >= ``min_miou`` and mean Dice >= ``min_dice``;
2. no prompt's mIoU falls more than ``max_regression`` below the champion's;
3. the mean mIoU over prompts improves by at least ``min_improvement`` (or there is no champion).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from drywall_core.config import GateConfig


@dataclass
class GateDecision:
    promote: bool
    reasons: list[str]
    candidate_miou: float
    champion_miou: float | None
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _per_prompt(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {d["prompt"]: {"miou": d["miou"], "mean_dice": d["mean_dice"]} for d in metrics["datasets"].values()}


def decide(candidate: dict[str, Any], champion: dict[str, Any] | None, cfg: GateConfig) -> GateDecision:
    """Judge evaluation metrics (``evaluate()`` format) of a candidate against the champion's."""
    cand = _per_prompt(candidate)
    champ = _per_prompt(champion) if champion else {}
    reasons: list[str] = []
    rows = []
    for prompt, m in sorted(cand.items()):
        c = champ.get(prompt)
        rows.append(
            {
                "prompt": prompt,
                "candidate_miou": m["miou"],
                "candidate_dice": m["mean_dice"],
                "champion_miou": c["miou"] if c else None,
                "champion_dice": c["mean_dice"] if c else None,
            }
        )
        if m["miou"] < cfg.min_miou:
            reasons.append(f"'{prompt}': mIoU {m['miou']:.3f} below floor {cfg.min_miou:.3f}")
        if m["mean_dice"] < cfg.min_dice:
            reasons.append(f"'{prompt}': mean Dice {m['mean_dice']:.3f} below floor {cfg.min_dice:.3f}")
        if c and m["miou"] < c["miou"] - cfg.max_regression:
            reasons.append(
                f"'{prompt}': mIoU {m['miou']:.3f} regresses more than {cfg.max_regression:.3f} "
                f"below the champion's {c['miou']:.3f}"
            )
    cand_mean = sum(m["miou"] for m in cand.values()) / max(len(cand), 1)
    champ_mean = None
    if champ:
        shared = [p for p in cand if p in champ]
        champ_mean = sum(champ[p]["miou"] for p in shared) / max(len(shared), 1)
        if cand_mean < champ_mean + cfg.min_improvement:
            reasons.append(
                f"mean mIoU {cand_mean:.3f} does not beat the champion's {champ_mean:.3f} "
                f"by the required {cfg.min_improvement:.3f}"
            )
    promote = not reasons
    if promote:
        reasons.append(
            "no champion yet; candidate clears every floor"
            if champion is None
            else f"mean mIoU {cand_mean:.3f} beats the champion's {champ_mean:.3f}; no prompt regresses"
        )
    return GateDecision(promote, reasons, cand_mean, champ_mean, rows)
