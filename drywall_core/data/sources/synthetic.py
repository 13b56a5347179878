"""Seeded generator of small Roboflow-layout COCO exports for both tasks.

Used by the demo and tests where no real data or network is at hand. Like real Roboflow exports
it has a supercategory id 0 that no annotation uses, several augmented variants of each source
photo (``<source>_jpg.rf.<hash>.jpg``), variants of one source spread over train and valid (the
leak our split removes), and a few images without annotations.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from drywall_core.data.exports import ANNOTATION_FILE
from drywall_core.data.sources.atomic import check_target, staged_dir
from drywall_core.data.sources.local import write_lineage

EXPORTS = {
    "cracks": ("synthetic-cracks.v1i.coco", "crack", "cracks"),
    "drywall-join": ("synthetic-drywall-join.v1i.coco", "drywall-join", "Drywall-Join"),
}


def _wall(rng: np.random.Generator, size: int) -> np.ndarray:
    """Painted-drywall texture: warm grey base, low-frequency blotches, fine grain."""
    base = rng.uniform(170, 215) + np.array([6.0, 2.0, -6.0]) * rng.uniform(0.5, 1.5)
    low = Image.fromarray(rng.uniform(0, 255, (6, 6)).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    blotch = (np.asarray(low, dtype=np.float32) - 128.0) * 0.12
    grain = rng.normal(0, 4.0, (size, size))
    img = base[None, None, :] + (blotch + grain)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _crack_polygon(rng: np.random.Generator, size: int) -> list[float]:
    """A wandering crack as a closed polygon: a random-walk spine widened along its normals."""
    n = int(rng.integers(8, 14))
    x0, y0 = rng.uniform(0.1, 0.9) * size, rng.uniform(0.05, 0.2) * size
    angle = rng.uniform(np.pi / 3, 2 * np.pi / 3)
    step = size * 0.8 / n
    pts = [(x0, y0)]
    for _ in range(n):
        angle += rng.normal(0, 0.35)
        x, y = pts[-1]
        pts.append((x + step * np.cos(angle), y + step * np.sin(angle)))
    spine = np.clip(np.array(pts), 1, size - 2)
    d = np.gradient(spine, axis=0)
    normal = np.stack([-d[:, 1], d[:, 0]], 1) / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-9)
    width = rng.uniform(1.0, 2.5, (len(spine), 1))
    left, right = spine + normal * width, spine - normal * width
    ring = np.clip(np.concatenate([left, right[::-1]]), 0, size - 1)
    return [round(float(v), 3) for v in ring.reshape(-1)]


def _tape_bbox(rng: np.random.Generator, size: int) -> list[float]:
    """A taping strip: a long thin band, vertical or horizontal."""
    thick, length = rng.uniform(0.08, 0.16) * size, rng.uniform(0.6, 0.95) * size
    a, b = rng.uniform(0.1, 0.8) * size, rng.uniform(0, size - length)
    x, y, w, h = (a, b, thick, length) if rng.random() < 0.5 else (b, a, length, thick)
    x, y = min(x, size - w - 1), min(y, size - h - 1)
    return [round(float(v), 1) for v in (x, y, w, h)]


def _draw_source(rng: np.random.Generator, task: str, size: int, empty: bool):
    img = Image.fromarray(_wall(rng, size))
    draw = ImageDraw.Draw(img)
    anns: list[dict] = []
    for _ in range(0 if empty else int(rng.integers(1, 3))):
        if task == "cracks":
            ring = _crack_polygon(rng, size)
            xy = list(zip(ring[0::2], ring[1::2], strict=True))
            draw.polygon(xy, fill=tuple(int(v) for v in rng.uniform(40, 80, 3)))
            xs, ys = ring[0::2], ring[1::2]
            bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            anns.append({"segmentation": [ring], "bbox": [round(v, 3) for v in bbox]})
        else:
            x, y, w, h = _tape_bbox(rng, size)
            shade = tuple(int(v) for v in rng.uniform(225, 250, 3))
            draw.rectangle([x, y, x + w, y + h], fill=shade)
            anns.append({"segmentation": [], "bbox": [x, y, w, h]})
    for a in anns:
        a["area"] = round(a["bbox"][2] * a["bbox"][3], 2)
    return img, anns


def _variant(img: Image.Image, anns: list[dict], k: int, size: int):
    """Augmented copy k of a source: k odd = horizontal flip; brightness varies."""
    out = ImageEnhance.Brightness(img).enhance(1.0 + 0.06 * (k - 1))
    if k % 2 == 0:
        return out, anns
    out = ImageOps.mirror(out)
    flipped = []
    for a in anns:
        x, y, w, h = a["bbox"]
        seg = [[v if i % 2 else round(size - 1 - v, 3) for i, v in enumerate(r)] for r in a["segmentation"]]
        if seg:
            xs = seg[0][0::2]
            x = min(xs)
        else:
            x = round(size - x - w, 1)
        flipped.append({**a, "segmentation": seg, "bbox": [x, y, w, h]})
    return out, flipped


def _write_export(root: Path, task: str, seed: int, n_sources: int, variants: int, size: int) -> None:
    rng = np.random.default_rng(seed)
    _, cat_name, super_name = EXPORTS[task]
    categories = [
        {"id": 0, "name": super_name, "supercategory": "none"},
        {"id": 1, "name": cat_name, "supercategory": super_name},
    ]
    splits: dict[str, dict] = {s: {"images": [], "annotations": []} for s in ("train", "valid")}
    for s in range(n_sources):
        empty = s == n_sources - 1  # one photo without annotations, like real exports
        img, anns = _draw_source(rng, task, size, empty=empty)
        for k in range(1 if empty else variants):
            vimg, vanns = _variant(img, anns, k, size)
            split = "valid" if rng.random() < 0.25 else "train"
            part = splits[split]
            digest = hashlib.md5(f"{task}-{seed}-{s}-{k}".encode()).hexdigest()
            name = f"wall{s:03d}_jpg.rf.{digest}.jpg"
            (root / split).mkdir(parents=True, exist_ok=True)
            vimg.save(root / split / name, quality=92)
            image_id = len(part["images"])
            part["images"].append({"id": image_id, "license": 1, "file_name": name, "height": size, "width": size})
            for a in vanns:
                part["annotations"].append(
                    {
                        "id": len(part["annotations"]),
                        "image_id": image_id,
                        "category_id": 1,
                        "iscrowd": 0,
                        **a,
                    }
                )
    for split, part in splits.items():
        coco = {
            "info": {"description": f"synthetic {task}"},
            "licenses": [],
            "categories": categories,
            **part,
        }
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / ANNOTATION_FILE).write_text(json.dumps(coco))


def generate_synthetic(
    out: Path,
    seed: int = 0,
    n_sources: int = 24,
    variants: int = 3,
    size: int = 192,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write one synthetic export per task under ``out``; returns ``{dataset: export folder}``."""
    out = Path(out)
    check_target(out, overwrite)
    paths = {}
    with staged_dir(out, "synthetic") as tmp:
        for i, (task, (folder, _, _)) in enumerate(EXPORTS.items()):
            _write_export(tmp / folder, task, seed + i, n_sources, variants, size)
            write_lineage(tmp / folder, {"source": "synthetic", "project": task, "seed": seed})
            paths[task] = out / folder
    return paths
