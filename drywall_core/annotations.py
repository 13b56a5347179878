"""COCO split -> pandas DataFrame, one row per annotation plus rows for images without any.

Each row carries the raw fields and the derived facts the validation suite checks (file present
and decodable, real size, bbox overflow, polygon ring shape...). Image-level columns are filled
on one row per image entry only (null elsewhere), so image-level counts are not inflated by the
number of annotations.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from drywall_core.exports import Split

KINDS = ("polygon", "rle", "bbox")


@dataclass(frozen=True)
class FileFacts:
    exists: bool
    decodable: bool | None
    width: int | None
    height: int | None
    error: str | None = None


def inspect_image(path: Path, max_pixels: int = 64_000_000) -> FileFacts:
    """Open and fully decode an image (a truncated JPEG fails only on full decode)."""
    if not path.is_file():
        return FileFacts(False, None, None, None, "missing")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                return FileFacts(True, False, w, h, f"{w}x{h} exceeds {max_pixels} pixels")
            im.load()
        return FileFacts(True, True, w, h)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "not decodable"
        return FileFacts(True, False, None, None, f"{type(exc).__name__}: {exc}")


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def _bbox(ann: dict) -> tuple[float, float, float, float] | None:
    b = ann.get("bbox")
    if isinstance(b, list | tuple) and len(b) == 4:
        vals = tuple(_num(v) for v in b)
        if not any(math.isnan(v) for v in vals):
            return vals  # type: ignore[return-value]
    return None


def annotation_kind(ann: dict) -> str:
    """polygon | rle | bbox (empty segmentation, box only) | invalid."""
    seg = ann.get("segmentation")
    if seg is None or seg == []:
        return "bbox" if _bbox(ann) else "invalid"
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        return "rle"
    if isinstance(seg, list) and all(isinstance(r, list) for r in seg):
        return "polygon"
    return "invalid"


def _ring_facts(seg: list, w: float, h: float) -> tuple[int, int, float]:
    """(rings with an odd coordinate count, fewest points in a ring, worst px outside the image)."""
    odd, min_pts, overflow = 0, 10**9, 0.0
    for ring in seg:
        coords = [_num(v) for v in ring]
        odd += len(coords) % 2
        min_pts = min(min_pts, len(coords) // 2)
        xs, ys = coords[0::2], coords[1::2]
        if xs and ys and not math.isnan(w) and not math.isnan(h):
            overflow = max(overflow, -min(xs), -min(ys), max(xs) - w, max(ys) - h)
    return odd, (0 if min_pts == 10**9 else min_pts), max(overflow, 0.0)


def _annotation_row(ann: dict, img: dict | None, cat_names: dict[Any, str]) -> dict[str, Any]:
    w = _num(img.get("width")) if img else math.nan
    h = _num(img.get("height")) if img else math.nan
    kind = annotation_kind(ann)
    box = _bbox(ann)
    row: dict[str, Any] = {
        "ann_id": ann.get("id"),
        "category_id": ann.get("category_id"),
        "category_name": cat_names.get(ann.get("category_id")),
        "kind": kind,
        "area": _num(ann.get("area")),
        "bbox_wellformed": box is not None,
    }
    if box:
        x, y, bw, bh = box
        row.update(bbox_w=bw, bbox_h=bh)
        if img:
            row["bbox_overflow_px"] = max(0.0, -x, -y, x + bw - w, y + bh - h)
    if kind == "polygon":
        odd, min_pts, over = _ring_facts(ann["segmentation"], w, h)
        row.update(ring_odd_count=odd, ring_min_points=min_pts)
        if img:
            row["poly_overflow_px"] = over
    return row


def split_frame(split: Split, max_pixels: int = 64_000_000, workers: int = 4) -> pd.DataFrame:
    """Build the validation DataFrame of one split (image files are opened and decoded)."""
    images = [i for i in split.images if isinstance(i, dict)]
    first_by_id: dict[Any, int] = {}
    for idx, img in enumerate(images):
        first_by_id.setdefault(img.get("id"), idx)
    cat_names = {c.get("id"): str(c.get("name")) for c in split.categories if isinstance(c, dict)}

    paths = [split.dir / str(img.get("file_name", "")) for img in images]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        facts = list(pool.map(lambda p: inspect_image(p, max_pixels), paths))

    anns_by_entry: dict[int, list[dict]] = {}
    orphans: list[dict] = []
    for ann in split.annotations:
        if not isinstance(ann, dict):
            continue
        idx = first_by_id.get(ann.get("image_id"))
        (orphans if idx is None else anns_by_entry.setdefault(idx, [])).append(ann)

    rows: list[dict[str, Any]] = []
    for idx, img in enumerate(images):
        f = facts[idx]
        image_cols = {
            "image_entry_id": img.get("id"),
            "file_exists": f.exists,
            "decodable": f.decodable,
            "decode_error": f.error,
            "width": _num(img.get("width")),
            "height": _num(img.get("height")),
            "file_width": f.width,
            "file_height": f.height,
        }
        anns = anns_by_entry.get(idx, [])
        image_cols["empty_image"] = 0.0 if anns else 1.0
        base = {"image_id": img.get("id"), "file_name": img.get("file_name")}
        if not anns:
            rows.append({**base, **image_cols})
        for j, ann in enumerate(anns):
            row = {**base, **_annotation_row(ann, img, cat_names)}
            rows.append({**row, **image_cols} if j == 0 else row)
    for ann in orphans:
        rows.append({"image_id": ann.get("image_id"), "file_name": None, **_annotation_row(ann, None, cat_names)})

    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    for col in NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    df.insert(0, "split", split.name)
    return df[["split", *COLUMNS]]


COLUMNS = [
    "image_id",
    "file_name",
    "image_entry_id",
    "file_exists",
    "decodable",
    "decode_error",
    "width",
    "height",
    "file_width",
    "file_height",
    "empty_image",
    "ann_id",
    "category_id",
    "category_name",
    "kind",
    "area",
    "bbox_wellformed",
    "bbox_w",
    "bbox_h",
    "bbox_overflow_px",
    "ring_odd_count",
    "ring_min_points",
    "poly_overflow_px",
]
NUMERIC = [
    "width",
    "height",
    "file_width",
    "file_height",
    "empty_image",
    "area",
    "bbox_w",
    "bbox_h",
    "bbox_overflow_px",
    "ring_odd_count",
    "ring_min_points",
    "poly_overflow_px",
]
