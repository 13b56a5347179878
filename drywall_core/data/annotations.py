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

from drywall_core.data.exports import Split
from drywall_core.data.images import ImageTooLarge, check_pixels, displayed_size

KINDS = ("polygon", "rle", "bbox")


@dataclass(frozen=True)
class FileFacts:
    exists: bool
    decodable: bool | None
    width: int | None
    height: int | None
    error: str | None = None


def inspect_image(path: Path, max_pixels: int = 64_000_000) -> FileFacts:
    """Open and fully decode an image (a truncated JPEG fails only on full decode).

    The size is the displayed one (EXIF orientation applied), the size masks are rendered at.
    """
    if not path.is_file():
        return FileFacts(False, None, None, None, "missing")
    try:
        with Image.open(path) as im:
            w, h = displayed_size(im)
            check_pixels(im, max_pixels)
            im.load()
        return FileFacts(True, True, w, h)
    except ImageTooLarge as exc:
        return FileFacts(True, False, w, h, str(exc))
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


def image_size(img: dict) -> tuple[int, int] | None:
    """(width, height) of an image entry when both are positive whole numbers (not strings, not bools)."""
    dims = []
    for key in ("width", "height"):
        v = img.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v != int(v) or v <= 0:
            return None
        dims.append(int(v))
    return dims[0], dims[1]


def image_path(split_dir: Path, name: Any) -> Path | None:
    """The image file of ``file_name`` inside the export, or None if it is not a plain relative name
    that stays inside the export folder (absolute paths, ``..`` and symlinks leaving it are refused)."""
    if not isinstance(name, str) or not name.strip():
        return None
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        return None
    full = split_dir / rel
    try:
        real = full.resolve()
    except (OSError, RuntimeError):
        return None
    return full if real.is_relative_to(split_dir.parent.resolve()) else None


def _rle_counts(text: str, limit: int) -> list[int] | None:
    """Decode COCO's compressed RLE string (pycocotools ``rleFrString``); None if it is not one."""
    counts: list[int] = []
    p, n = 0, len(text)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n or k > 12:
                return None
            c = ord(text[p]) - 48
            if not 0 <= c <= 63:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0 or x > limit:
            return None
        counts.append(x)
    return counts


def rle_problem(seg: dict, size: tuple[int, int] | None) -> str | None:
    """Why an RLE segmentation cannot be rendered on an image of ``size`` (width, height), or None."""
    rle_size = seg.get("size")
    if not (isinstance(rle_size, list) and len(rle_size) == 2 and all(type(v) is int for v in rle_size)):
        return "RLE size is not [height, width]"
    if size is None:
        return None  # the image's own size is reported by its own check
    w, h = size
    if rle_size != [h, w]:
        return f"RLE size {rle_size} differs from the image's [{h}, {w}]"
    counts = seg.get("counts")
    if isinstance(counts, list):
        if not all(type(c) is int and 0 <= c <= h * w for c in counts):
            return "RLE counts are not non-negative integers"
        runs: list[int] | None = counts
    elif isinstance(counts, str):
        runs = _rle_counts(counts, h * w)
        if runs is None:
            return "RLE counts string is not valid compressed RLE"
    else:
        return "RLE counts missing"
    total = sum(runs)
    return None if total == h * w else f"RLE counts cover {total} pixels, not {h}x{w}={h * w}"


def segmentation_problem(ann: dict, size: tuple[int, int] | None) -> str | None:
    """Why an annotation cannot be rasterised, or None: the one rule validation and rendering share."""
    kind = annotation_kind(ann)
    seg = ann.get("segmentation")
    if kind == "invalid":
        return f"segmentation is {type(seg).__name__}, not polygons, RLE or empty with a bbox"
    if kind == "rle":
        return rle_problem(seg, size)
    if kind == "polygon" and not all(math.isfinite(_num(v)) for r in seg for v in r):
        return "polygon coordinate is not a finite number"
    return None


def entry_problem(entry: Any, where: str) -> str | None:
    """Why a COCO ``images``/``annotations`` entry cannot be used at all, or None."""
    if not isinstance(entry, dict):
        return f"{where} is {'null' if entry is None else type(entry).__name__}, not an object"
    for key in ("id", "image_id") if where.startswith("annotations") else ("id",):
        v = entry.get(key)
        if isinstance(v, bool) or not isinstance(v, int | str):
            return f"{where}.{key} is {'missing' if v is None else type(v).__name__}, not an integer or string"
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
    size = image_size(img) if img else None
    w, h = (float(size[0]), float(size[1])) if size else (math.nan, math.nan)
    kind = annotation_kind(ann)
    box = _bbox(ann)
    cat = ann.get("category_id")
    row: dict[str, Any] = {
        "ann_id": ann.get("id"),
        "category_id": cat if isinstance(cat, int | str) and not isinstance(cat, bool) else None,
        "category_name": cat_names.get(cat) if isinstance(cat, int | str) else None,
        "kind": kind,
        "area": _num(ann.get("area")),
        "bbox_wellformed": box is not None,
        "seg_error": segmentation_problem(ann, size),
    }
    if box:
        x, y, bw, bh = box
        row.update(bbox_w=bw, bbox_h=bh)
        if img:
            row["bbox_overflow_px"] = max(0.0, -x, -y, x + bw - w, y + bh - h)
    if kind == "polygon" and row["seg_error"] is None:
        odd, min_pts, over = _ring_facts(ann["segmentation"], w, h)
        row.update(ring_odd_count=odd, ring_min_points=min_pts)
        if img:
            row["poly_overflow_px"] = over
    return row


def usable_entries(split: Split) -> tuple[list[dict], list[dict], list[dict[str, Any]]]:
    """Usable image and annotation entries, and one row per entry that is not usable at all."""
    images, anns, broken = [], [], []
    for kind, entries, keep in (("images", split.images, images), ("annotations", split.annotations, anns)):
        for i, entry in enumerate(entries):
            problem = entry_problem(entry, f"{kind}[{i}]")
            if problem:
                broken.append({"image_id": None, "file_name": None, "entry_error": problem})
            else:
                keep.append(entry)
    return images, anns, broken


def split_frame(split: Split, max_pixels: int = 64_000_000, workers: int = 4) -> pd.DataFrame:
    """Build the validation DataFrame of one split (image files are opened and decoded)."""
    images, annotations, rows = usable_entries(split)
    first_by_id: dict[Any, int] = {}
    for idx, img in enumerate(images):
        first_by_id.setdefault(img.get("id"), idx)
    cat_names = {
        c.get("id"): str(c.get("name")) for c in split.categories if isinstance(c, dict) and _hashable(c.get("id"))
    }

    paths = [image_path(split.dir, img.get("file_name")) for img in images]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        facts = list(pool.map(lambda p: inspect_image(p, max_pixels) if p else None, paths))

    anns_by_entry: dict[int, list[dict]] = {}
    orphans: list[dict] = []
    for ann in annotations:
        idx = first_by_id.get(ann.get("image_id"))
        (orphans if idx is None else anns_by_entry.setdefault(idx, [])).append(ann)

    for idx, img in enumerate(images):
        f = facts[idx]
        size = image_size(img)
        image_cols = {
            "image_entry_id": img.get("id"),
            "file_inside": f is not None,
            "file_exists": f.exists if f else None,
            "decodable": f.decodable if f else None,
            "decode_error": f.error if f else None,
            "size_valid": size is not None,
            "size_raw": f"width={img.get('width')!r} height={img.get('height')!r}",
            "width": float(size[0]) if size else math.nan,
            "height": float(size[1]) if size else math.nan,
            "file_width": f.width if f else None,
            "file_height": f.height if f else None,
            "mask_name": Path(str(img.get("file_name"))).stem,
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


def _hashable(v: Any) -> bool:
    return isinstance(v, int | str | float | bool) or v is None


COLUMNS = [
    "image_id",
    "file_name",
    "entry_error",
    "image_entry_id",
    "file_inside",
    "file_exists",
    "decodable",
    "decode_error",
    "size_valid",
    "size_raw",
    "width",
    "height",
    "file_width",
    "file_height",
    "mask_name",
    "empty_image",
    "ann_id",
    "category_id",
    "category_name",
    "kind",
    "area",
    "bbox_wellformed",
    "seg_error",
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
