"""Mixed supervision: strong labels (polygons) BCE + Dice; weak labels (boxes) down-weighted BCE only.

A box mask marks background pixels as foreground, so Dice on it would reward filling the box;
BCE alone at a lower weight lets box labels teach "where" without teaching "box-shaped".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-sample 1 - soft Dice, (B,)."""
    prob = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (prob * t).sum(1)
    return 1.0 - (2 * inter + eps) / (prob.sum(1) + t.sum(1) + eps)


def mixed_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    strong: torch.Tensor,
    weak_weight: float = 0.5,
    dice_weight: float = 1.0,
    pos_weight: float | None = None,
) -> torch.Tensor:
    """Mean over the batch of BCE + Dice (strong) or ``weak_weight`` x BCE (weak)."""
    pw = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device, dtype=logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw, reduction="none").flatten(1).mean(1)
    strong_loss = bce + dice_weight * soft_dice_loss(logits, target)
    return torch.where(strong, strong_loss, weak_weight * bce).mean()
