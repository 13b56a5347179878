"""Batched prediction: images + a text prompt -> binary masks at each image's original size."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from drywall_core.base.errors import InputError
from drywall_core.data.images import open_rgb
from drywall_core.data.masks import save_png_atomic
from drywall_core.model.load import LoadedModel
from drywall_core.model.runtime import probabilities_for, text_embeddings_cached

log = logging.getLogger(__name__)


MAX_NAME_BYTES = 255  # a file name on every common file system


def output_name(image: Path, prompt: str) -> str:
    """``<image stem>__<prompt with spaces as _>.png`` (other path-unsafe characters dropped).

    A name too long for the file system keeps its start and gets a short hash of the prompt,
    so long prompts still give distinct, writable names.
    """
    slug = re.sub(r"[^\w\-.]", "", "_".join(prompt.strip().split()))
    name = f"{Path(image).stem}__{slug}.png"
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    tag = hashlib.sha256(prompt.encode()).hexdigest()[:12]
    keep = Path(image).stem.encode()[:100].decode(errors="ignore")
    room = MAX_NAME_BYTES - len(f"{keep}__-{tag}.png".encode())
    return f"{keep}__{slug.encode()[:room].decode(errors='ignore')}-{tag}.png"


def plan_outputs(paths: Sequence[Path], prompt: str, out_dir: Path) -> list[tuple[Path, Path]]:
    """(image, mask file) pairs; the same file given twice counts once, two files on one name are refused."""
    seen: dict[Path, Path] = {}
    pairs: list[tuple[Path, Path]] = []
    done: set[Path] = set()
    for p in map(Path, paths):
        real = p.resolve()
        if real in done:
            continue
        dst = Path(out_dir) / output_name(p, prompt)
        if dst in seen:
            raise InputError(f"{seen[dst]} and {p} would both be written to {dst}: rename one or predict them apart")
        seen[dst] = p
        done.add(real)
        pairs.append((p, dst))
    return pairs


@dataclass
class PredictReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def predict_files(
    loaded: LoadedModel,
    paths: Sequence[Path],
    prompt: str,
    out_dir: Path,
    batch_size: int = 8,
    threshold: float | None = None,
    progress: bool = True,
) -> PredictReport:
    """Write one mask per readable image; unreadable ones are reported and skipped.

    Images are decoded one batch at a time, so memory stays flat however many are given.
    """
    threshold = loaded.threshold_for(prompt) if threshold is None else threshold
    pairs = plan_outputs(paths, prompt, out_dir)
    text_embeddings_cached(loaded, [prompt])  # a prompt the model cannot take fails before any work
    report = PredictReport()
    bar = tqdm(total=len(pairs), desc="predict", unit="img", disable=None if progress else True)
    for start in range(0, len(pairs), batch_size):
        chunk: list[tuple[Path, Image.Image]] = []
        for src, dst in pairs[start : start + batch_size]:
            try:
                chunk.append((dst, open_rgb(src)))
            except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, the rest go on
                report.failed.append((src, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__))
        if chunk:
            probs = probabilities_for(loaded, [im for _, im in chunk], prompt)
            for (dst, _), prob in zip(chunk, probs, strict=True):
                save_png_atomic(((prob >= threshold) * 255).astype(np.uint8), dst)
                report.written.append(dst)
        bar.update(len(pairs[start : start + batch_size]))
    bar.close()
    return report
