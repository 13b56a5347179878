"""The warm-up set: a few validation photos recorded with each model version at publish time, with
that version's own masks on them.

A serving host loads a new version beside the one it serves and runs it on these photos before it
swaps: if its masks there do not match the recorded ones (mask IoU below a setting), something
differs between where the version was judged and where it would serve -- a different base model,
a broken kernel, a corrupted download that still passed its checksum because the wrong file was
published -- and the version is refused instead of answering users.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drywall_core.base.errors import InputError
from drywall_core.base.fsutil import atomic_write_text, sha256_file
from drywall_core.data.images import open_rgb
from drywall_core.data.masks import decode_rle, encode_rle
from drywall_core.model.load import LoadedModel
from drywall_core.model.metrics import iou
from drywall_core.model.runtime import probabilities, probabilities_each

WARMUP_FILE = "warmup.json"
PHOTO_PREFIX = "warmup-"


@dataclass(frozen=True)
class WarmupCheck:
    """How a loaded version did on its recorded warm-up set."""

    passed: bool
    cases: int
    worst_iou: float
    reason: str


def record_warmup(loaded: LoadedModel, photos: Sequence[Path], prompts: Sequence[str], out: Path) -> list[Path]:
    """Copy ``photos`` into ``out`` (``warmup-<i><suffix>``) and write ``warmup.json`` with the
    model's masks on them, per prompt, at its thresholds; returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = [open_rgb(p) for p in photos]
    maps = probabilities(loaded, images, prompts) if images else []
    files, cases = [], []
    for i, (src, per_prompt) in enumerate(zip(photos, maps, strict=True)):
        name = f"{PHOTO_PREFIX}{i}{Path(src).suffix.lower() or '.png'}"
        (out / name).write_bytes(Path(src).read_bytes())
        files.append(out / name)
        digest = sha256_file(out / name)
        for prompt, prob in per_prompt.items():
            threshold = loaded.threshold_for(prompt)
            mask = (prob >= threshold).astype(np.uint8)
            cases.append(
                {
                    "photo": name,
                    "sha256": digest,
                    "prompt": prompt,
                    "threshold": threshold,
                    "mask": encode_rle(mask),
                }
            )
    record = {"precision": loaded.precision, "cases": cases}
    atomic_write_text(out / WARMUP_FILE, json.dumps(record, indent=1))
    return [*files, out / WARMUP_FILE]


def check_warmup(loaded: LoadedModel, folder: Path, min_iou: float) -> WarmupCheck:
    """Run ``loaded`` on the warm-up set in ``folder`` (a downloaded version) and compare its masks
    with the recorded ones. A version published without a set passes with a note (nothing to
    compare), after one forward pass that proves it answers."""
    folder = Path(folder)
    record_file = folder / WARMUP_FILE
    if not record_file.is_file():
        from PIL import Image

        probabilities(loaded, [Image.new("RGB", (64, 64), (128, 128, 128))], list(loaded.text_memo) or ["crack"])
        return WarmupCheck(True, 0, 1.0, "no warm-up set recorded with this version (published before warm-up sets)")
    try:
        cases = json.loads(record_file.read_text())["cases"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{record_file}: not a warm-up record ({exc})") from None
    photos = sorted({c["photo"] for c in cases})
    images = {name: open_rgb(folder / name) for name in photos}
    asked = [sorted({c["prompt"] for c in cases if c["photo"] == name}) for name in photos]
    maps = dict(zip(photos, probabilities_each(loaded, [images[n] for n in photos], asked), strict=True))
    worst, worst_case = 1.0, ""
    for c in cases:
        got = maps[c["photo"]][c["prompt"]] >= float(c["threshold"])
        score = iou(got, decode_rle(c["mask"]))
        if score < worst:
            worst, worst_case = score, f"{c['photo']} '{c['prompt']}'"
    if worst < min_iou:
        return WarmupCheck(
            False,
            len(cases),
            worst,
            f"warm-up masks differ from the recorded ones (mask IoU {worst:.3f} < {min_iou} on {worst_case})",
        )
    return WarmupCheck(
        True, len(cases), worst, f"warm-up matched on {len(cases)} photo-prompt pairs (worst IoU {worst:.3f})"
    )
