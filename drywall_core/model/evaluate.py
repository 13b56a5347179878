"""Evaluation: per-image IoU/Dice, threshold sweep, boundary F1, prompt robustness, latency, and
for crack datasets the error of the predicted crack count, length and width.

Images are encoded once per batch and decoded for every prompt of their task, so evaluating all
synonyms costs one backbone pass, not one per synonym.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from drywall_core.base.fsutil import atomic_open, atomic_write_text
from drywall_core.data.datasets import DatasetSpec
from drywall_core.data.images import open_rgb
from drywall_core.data.samples import Sample
from drywall_core.data.slice_keys import SLICE_KEYS, UNKNOWN
from drywall_core.model.load import LoadedModel
from drywall_core.model.measure import MIN_AREA_PX, measure_mask
from drywall_core.model.metrics import THRESHOLDS, best_threshold, boundary_f1, dice, iou, sweep
from drywall_core.model.runtime import probabilities, probabilities_for


@dataclass
class ImageResult:
    image: str
    dataset: str
    iou: float
    dice: float
    boundary_f1: float
    sweep: dict[float, float]
    sizes: SizeError | None = None  # crack datasets: predicted against ground-truth measurements
    slices: dict[str, str] | None = None  # site, camera, week where the dataset carries them


@dataclass(frozen=True)
class SizeError:
    """One image's crack measurements, predicted and true."""

    cracks: int
    cracks_true: int
    length_px: float
    length_true_px: float
    max_width_px: float
    max_width_true_px: float

    @classmethod
    def of(cls, pred: np.ndarray, gt: np.ndarray, min_area_px: int) -> SizeError:
        p, t = measure_mask(pred, min_area_px=min_area_px), measure_mask(gt, min_area_px=min_area_px)
        return cls(p.n_cracks, t.n_cracks, p.total_length_px, t.total_length_px, p.max_width_px, t.max_width_px)


def _load(sample: Sample) -> tuple[Image.Image, np.ndarray]:
    rgb = open_rgb(sample.image)
    with Image.open(sample.mask) as m:
        gt = np.asarray(m.convert("L")) > 127
    return rgb, gt


@torch.no_grad()
def evaluate(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    specs: dict[str, DatasetSpec],
    batch_size: int = 8,
    progress: bool = True,
    latency_images: int = 16,
    tolerance_px: float = 2.0,
    min_area_px: int = MIN_AREA_PX,
) -> dict[str, Any]:
    """Metrics for every dataset in ``samples`` (canonical prompt, and every synonym); for crack
    datasets also how far the predicted measurements are from the ground truth's."""
    device = next(loaded.model.parameters()).device
    loaded.model.eval()
    batch_size = max(batch_size, 1)
    by_ds: dict[str, list[Sample]] = {}
    for s in samples:
        by_ds.setdefault(s.dataset, []).append(s)
    out: dict[str, Any] = {"datasets": {}, "per_image": []}
    bar = tqdm(total=len(samples), desc="evaluate", unit="img", disable=None if progress else True)
    for name, group in sorted(by_ds.items()):
        spec = specs[name]
        prompts = spec.prompts
        results: list[ImageResult] = []
        synonym_ious: dict[str, list[float]] = {p: [] for p in prompts}
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            loaded_imgs = [_load(s) for s in chunk]
            imgs = [im for im, _ in loaded_imgs]
            maps = probabilities(loaded, imgs, prompts, batch_size)  # each image encoded once for all synonyms
            for pi, prompt in enumerate(prompts):
                for s, (_, gt), prob in zip(chunk, loaded_imgs, (m[prompt] for m in maps), strict=True):
                    pred = prob >= 0.5
                    synonym_ious[prompt].append(iou(pred, gt))
                    if pi == 0:
                        results.append(
                            ImageResult(
                                str(s.image),
                                name,
                                iou(pred, gt),
                                dice(pred, gt),
                                boundary_f1(pred, gt, tolerance_px),
                                sweep(prob, gt),
                                SizeError.of(pred, gt, min_area_px) if spec.measure == "lines" else None,
                                dict(vars(s.slices)) if s.slices is not None else None,
                            )
                        )
            bar.update(len(chunk))
        out["datasets"][name] = _summarise(spec, results, synonym_ious)
        out["per_image"] += [asdict(r) for r in results]
    bar.close()
    ds = out["datasets"].values()
    out["overall"] = {
        "miou": float(np.mean([d["miou"] for d in ds])) if ds else 0.0,
        "mean_dice": float(np.mean([d["mean_dice"] for d in ds])) if ds else 0.0,
        "images": len(samples),
    }
    out["latency"] = measure_latency(loaded, samples[:latency_images], specs)
    out["model"] = {
        "base_model": loaded.base_id,
        "revision": loaded.revision,
        "fine_tuned": bool(loaded.manifest),
        "device": device.type,
    }
    return out


def _summarise(spec: DatasetSpec, results: list[ImageResult], synonym_ious: dict[str, list[float]]) -> dict:
    t_best, miou_best = best_threshold([r.sweep for r in results])
    per_syn = {p: float(np.mean(v)) for p, v in synonym_ious.items()}
    vals = list(per_syn.values())
    return {
        "prompt": spec.prompt,
        "label_strength": spec.label_strength,
        "images": len(results),
        "miou": float(np.mean([r.iou for r in results])),
        "mean_dice": float(np.mean([r.dice for r in results])),
        "boundary_f1": float(np.mean([r.boundary_f1 for r in results])),
        "best_threshold": t_best,
        "miou_at_best_threshold": miou_best,
        "sweep": {str(t): float(np.mean([r.sweep[t] for r in results])) for t in THRESHOLDS},
        "prompt_robustness": per_syn,
        "robustness_spread": {
            "min": min(vals),
            "max": max(vals),
            "range": max(vals) - min(vals),
            "std": float(np.std(vals)),
        },
        **size_errors([r.sizes for r in results if r.sizes is not None]),
        **per_slice(results),
    }


def per_slice(results: Sequence[ImageResult]) -> dict[str, Any]:
    """mIoU and mean Dice per site, camera and week, for the keys the dataset carries (``{}`` when
    it carries none): a model can be good on average and poor on one site's walls."""
    tagged = [r for r in results if r.slices]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for key in SLICE_KEYS:
        groups: dict[str, list[ImageResult]] = {}
        for r in tagged:
            groups.setdefault(r.slices.get(key, UNKNOWN), []).append(r)
        if set(groups) - {UNKNOWN}:
            out[key] = {
                v: {
                    "images": len(g),
                    "miou": float(np.mean([r.iou for r in g])),
                    "mean_dice": float(np.mean([r.dice for r in g])),
                }
                for v, g in sorted(groups.items())
            }
    return {"slices": out} if out else {}


def size_errors(sizes: Sequence[SizeError]) -> dict[str, Any]:
    """Mean absolute errors of crack count, total length and widest point over the images, and the
    median relative length error over the images with cracks (``{}`` for datasets not measured)."""
    if not sizes:
        return {}
    rel = [abs(z.length_px - z.length_true_px) / z.length_true_px for z in sizes if z.length_true_px > 0]
    return {
        "measurement_error": {
            "images": len(sizes),
            "count_mae": float(np.mean([abs(z.cracks - z.cracks_true) for z in sizes])),
            "length_mae_px": float(np.mean([abs(z.length_px - z.length_true_px) for z in sizes])),
            "length_rel_error_median": float(np.median(rel)) if rel else None,
            "max_width_mae_px": float(np.mean([abs(z.max_width_px - z.max_width_true_px) for z in sizes])),
            "true_length_px_mean": float(np.mean([z.length_true_px for z in sizes])),
            "true_cracks_mean": float(np.mean([z.cracks_true for z in sizes])),
        }
    }


def measure_latency(loaded: LoadedModel, samples: Sequence[Sample], specs: dict[str, DatasetSpec]) -> dict:
    """End-to-end latency of one image through the runtime (batch 1, one prompt), after one warm-up."""
    if not samples:
        return {}
    times = []
    for i, s in enumerate(samples):
        im, _ = _load(s)
        t0 = time.perf_counter()
        probabilities_for(loaded, [im], specs[s.dataset].prompt)
        if i:  # first call is warm-up
            times.append(time.perf_counter() - t0)
    times = times or [0.0]
    return {
        "ms_per_image_mean": 1000 * statistics.fmean(times),
        "ms_per_image_p50": 1000 * statistics.median(times),
        "ms_per_image_max": 1000 * max(times),
        "images": len(times),
    }


def markdown_table(metrics: dict[str, Any], champion: dict[str, Any] | None = None) -> str:
    """Per-prompt table; with ``champion`` metrics, a side-by-side comparison."""
    head = "| prompt | images | mIoU@0.5 | mean Dice | boundary F1 (2 px) | best thr | mIoU@best | synonym spread |"
    if champion:
        head += " champion mIoU |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, d in metrics["datasets"].items():
        row = (
            f"| {d['prompt']} | {d['images']} | {d['miou']:.3f} | {d['mean_dice']:.3f} | {d['boundary_f1']:.3f} "
            f"| {d['best_threshold']:.1f} | {d['miou_at_best_threshold']:.3f} "
            f"| {d['robustness_spread']['min']:.3f}-{d['robustness_spread']['max']:.3f} |"
        )
        if champion:
            c = champion.get("datasets", {}).get(name)
            row += f" {c['miou']:.3f} |" if c else " - |"
        lines.append(row)
    sizes = [(d["prompt"], d["measurement_error"]) for d in metrics["datasets"].values() if d.get("measurement_error")]
    if sizes:
        lines += ["", "| prompt | images | crack count MAE | length MAE px | median length error | widest MAE px |"]
        lines.append("|---|---|---|---|---|---|")
        for prompt, e in sizes:
            rel = "-" if e["length_rel_error_median"] is None else f"{100 * e['length_rel_error_median']:.0f}%"
            lines.append(
                f"| {prompt} | {e['images']} | {e['count_mae']:.2f} | {e['length_mae_px']:.1f} | {rel} "
                f"| {e['max_width_mae_px']:.2f} |"
            )
    sliced = [
        (d["prompt"], key, v, m)
        for d in metrics["datasets"].values()
        for key, vs in d.get("slices", {}).items()
        for v, m in vs.items()
    ]
    if sliced:
        lines += ["", "| prompt | slice | images | mIoU@0.5 | mean Dice |", "|---|---|---|---|---|"]
        lines += [
            f"| {p} | {key}={v} | {m['images']} | {m['miou']:.3f} | {m['mean_dice']:.3f} |" for p, key, v, m in sliced
        ]
    lat = metrics.get("latency", {})
    if lat:
        lines.append("")
        lines.append(f"Latency: {lat['ms_per_image_mean']:.1f} ms/image (mean, batch 1, {metrics['model']['device']})")
    return "\n".join(lines) + "\n"


def _overlay(img: Image.Image, mask: np.ndarray, color: tuple[int, int, int]) -> Image.Image:
    base = img.convert("RGB")
    layer = Image.new("RGB", base.size, color)
    alpha = Image.fromarray((mask * 110).astype(np.uint8))
    return Image.composite(layer, base, alpha)


def best_worst_grid(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    specs: dict[str, DatasetSpec],
    per_image: list[dict],
    path: Path,
    k: int = 3,
    thumb: int = 160,
) -> Path:
    """PNG grid: rows = k best then k worst images by IoU; columns = image, ground truth, prediction."""
    by_path = {str(s.image): s for s in samples}
    ranked = sorted(per_image, key=lambda r: r["iou"])
    rows = list(reversed(ranked[-k:])) + ranked[:k] if len(ranked) > 2 * k else list(reversed(ranked))
    label_h = 16
    grid = Image.new("RGB", (3 * thumb, len(rows) * (thumb + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        s = by_path[row["image"]]
        img, gt = _load(s)
        prob = probabilities_for(loaded, [img], specs[s.dataset].prompt)[0]
        tiles = [img, _overlay(img, gt, (0, 200, 0)), _overlay(img, prob >= 0.5, (230, 30, 30))]
        y = r * (thumb + label_h)
        draw.text(
            (2, y + 2),
            f"{'best' if r < min(k, len(rows)) else 'worst'}  IoU {row['iou']:.3f}  {Path(row['image']).name[:40]}",
            fill="black",
        )
        for c, tile in enumerate(tiles):
            grid.paste(tile.resize((thumb, thumb)), (c * thumb, y + label_h))
    with atomic_open(path, "wb") as f:
        grid.save(f, format="PNG")
    return path


def write_reports(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    specs: dict[str, DatasetSpec],
    metrics: dict[str, Any],
    out_dir: Path,
) -> dict[str, Path]:
    """metrics.json, metrics.md and best_worst.png in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out_dir / "metrics.json",
        "table": out_dir / "metrics.md",
        "grid": out_dir / "best_worst.png",
    }
    atomic_write_text(paths["metrics"], json.dumps(metrics, indent=2, default=str))
    atomic_write_text(paths["table"], markdown_table(metrics))
    best_worst_grid(loaded, samples, specs, metrics["per_image"], paths["grid"])
    return paths
