"""The promotion gate: a candidate replaces the champion only when it is good and better.

Rules (all must hold), on metrics of both models measured on the *same* validation images:
1. every prompt's mIoU >= ``min_miou`` and mean Dice >= ``min_dice``;
2. no prompt's mIoU falls more than ``max_regression`` below the champion's;
3. the mean mIoU over prompts improves by at least ``min_improvement`` (or there is no champion);
4. optionally (``min_shadow_agreement``), on the latest field photos the candidate's masks agree with
   the champion's (mean IoU per prompt) at least that much: a candidate may score better on the
   labelled set and still change field behaviour too much.

The shadow comparison is reported either way: in the decision, its reasons and the audit line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from drywall_core.base.config import GateConfig


@dataclass
class GateDecision:
    promote: bool
    reasons: list[str]
    candidate_miou: float
    champion_miou: float | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    shadow: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _per_prompt(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {d["prompt"]: {"miou": d["miou"], "mean_dice": d["mean_dice"]} for d in metrics["datasets"].values()}


def shadow_lines(shadow: dict[str, Any] | None, cfg: GateConfig) -> tuple[list[str], list[str]]:
    """(refusals, notes) from a shadow comparison (``shadow.shadow_compare`` format, or a ``note``)."""
    if not shadow or not shadow.get("prompts"):
        return [], [f"shadow: {(shadow or {}).get('note') or 'not run'}"]
    refusals, notes = [], []
    for prompt, row in sorted(shadow["prompts"].items()):
        notes.append(
            f"shadow: '{prompt}' agreement {row['agreement']:.3f} with the champion on {row['images']} field images"
            f" ({row['strong_disagreement_share']:.0%} disagree strongly)"
        )
        if cfg.min_shadow_agreement is not None and row["agreement"] < cfg.min_shadow_agreement:
            refusals.append(
                f"'{prompt}': shadow agreement {row['agreement']:.3f} with the champion is below the floor "
                f"{cfg.min_shadow_agreement:.3f} (field behaviour would change too much)"
            )
    return refusals, notes


CLAIM_TOLERANCE = 0.01  # mIoU/Dice: another host, device or kernel may round differently, never by more


def claim_mismatches(claimed: dict[str, Any], measured: dict[str, Any], tol: float = CLAIM_TOLERANCE) -> list[str]:
    """Where the metrics a run reports differ from what the gate measured itself on the same images."""
    try:
        said = _per_prompt(claimed)
    except (KeyError, TypeError, AttributeError):
        return ["the run's metrics file is not in evaluate() format; its claims cannot be checked"]
    found = _per_prompt(measured)
    lines = []
    for prompt in sorted(set(said) | set(found)):
        if prompt not in said or prompt not in found:
            lines.append(f"'{prompt}': the run's metrics and the gate's measurement cover different prompts")
            continue
        for key, label in (("miou", "mIoU"), ("mean_dice", "mean Dice")):
            a, b = said[prompt][key], found[prompt][key]
            if not isinstance(a, int | float) or abs(a - b) > tol:
                lines.append(
                    f"'{prompt}': the run claims {label} {a if not isinstance(a, int | float) else f'{a:.3f}'}, "
                    f"the gate measured {b:.3f} on the same images: claimed metrics refused"
                )
    return lines


def decide(
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    cfg: GateConfig,
    shadow: dict[str, Any] | None = None,
    claimed: dict[str, Any] | None = None,
) -> GateDecision:
    """Judge evaluation metrics (``evaluate()`` format) of a candidate against the champion's.

    ``candidate`` is what the gate measured itself; ``claimed``, what the candidate's run reported
    (its ``eval/metrics.json``): a claim the measurement does not bear out refuses the candidate.
    """
    cand = _per_prompt(candidate)
    champ = _per_prompt(champion) if champion else {}
    reasons: list[str] = claim_mismatches(claimed, candidate) if claimed is not None else []
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
    refusals, notes = shadow_lines(shadow, cfg)
    reasons += refusals
    promote = not reasons
    if promote:
        reasons.append(
            "no champion yet; candidate clears every floor"
            if champion is None
            else f"mean mIoU {cand_mean:.3f} beats the champion's {champ_mean:.3f}; no prompt regresses"
        )
    return GateDecision(promote, reasons + notes, cand_mean, champ_mean, rows, dict(shadow or {}))
