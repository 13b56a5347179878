"""Batched prediction: images + a text prompt -> binary masks at each image's original size."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from drywall_core.features import decode, encode_images, pixel_values, text_embeddings
from drywall_core.masks import save_png_atomic
from drywall_core.model import LoadedModel

log = logging.getLogger(__name__)


def output_name(image: Path, prompt: str) -> str:
    """``<image stem>__<prompt with spaces as _>.png`` (other path-unsafe characters dropped)."""
    slug = re.sub(r"[^\w\-.]", "", "_".join(prompt.strip().split()))
    return f"{Path(image).stem}__{slug}.png"


def _device(loaded: LoadedModel) -> torch.device:
    return next(loaded.model.parameters()).device


def upsample_probs(logits: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Sigmoid probabilities resized (bilinear) to each (width, height)."""
    out = []
    for lg, (w, h) in zip(logits, sizes, strict=True):
        up = F.interpolate(lg[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)
        out.append(torch.sigmoid(up)[0, 0].cpu().numpy())
    return out


@torch.no_grad()
def predict_probs(loaded: LoadedModel, images: Sequence[Image.Image], prompt: str) -> list[np.ndarray]:
    """Foreground probability maps, one per image, at the image's size. One batch."""
    device = _device(loaded)
    acts = encode_images(loaded.model, pixel_values(loaded, images).to(device))
    cond = text_embeddings(loaded, [prompt]).expand(len(images), -1)
    return upsample_probs(decode(loaded.model, acts, cond), [im.size for im in images])


@dataclass
class PredictReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def predict_files(
    loaded: LoadedModel,
    paths: Sequence[Path],
    prompt: str,
    out_dir: Path,
    batch_size: int = 8,
    threshold: float | None = None,
    progress: bool = True,
) -> PredictReport:
    """Write one mask per readable image; unreadable ones are reported and skipped."""
    threshold = loaded.threshold_for(prompt) if threshold is None else threshold
    report = PredictReport()
    good: list[tuple[Path, Image.Image]] = []
    for p in map(Path, paths):
        try:
            good.append((p, _open(p)))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, the rest go on
            report.failed.append((p, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__))
    bar = tqdm(total=len(good), desc="predict", unit="img", disable=None if progress else True)
    for start in range(0, len(good), batch_size):
        chunk = good[start : start + batch_size]
        probs = predict_probs(loaded, [im for _, im in chunk], prompt)
        for (path, _), prob in zip(chunk, probs, strict=True):
            dst = Path(out_dir) / output_name(path, prompt)
            save_png_atomic(((prob >= threshold) * 255).astype(np.uint8), dst)
            report.written.append(dst)
        bar.update(len(chunk))
    bar.close()
    return report
