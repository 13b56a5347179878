"""Render one binary mask per image: the union of all its annotations, through pycocotools.

Polygons and RLE go through ``frPyObjects``; box-only annotations through pycocotools' bbox
conversion (a weak label: the box is the mask). All RLEs of an image are merged before a single
``decode``, images are rendered in parallel processes, outputs are written under a temporary
name and renamed, and a manifest of input fingerprints makes re-runs skip unchanged images.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin
from tqdm import tqdm

from drywall_core.base.errors import InputError
from drywall_core.base.fsutil import atomic_open, atomic_write_text, ensure_dir, remove_stale_temps
from drywall_core.base.procs import imap_processes
from drywall_core.data.annotations import image_size, segmentation_problem, usable_entries
from drywall_core.data.exports import Export, Split

MANIFEST = ".masks-manifest.json"
RENDERER_VERSION = "1"  # bump when rasterisation changes, to invalidate every cached mask
SAVE_EVERY_S = 2.0  # how often the manifest is saved while rendering (a kill loses at most this much)


@dataclass(frozen=True)
class MaskJob:
    """Everything needed to render one mask (picklable, so it can cross process boundaries)."""

    out: str
    width: int
    height: int
    annotations: tuple[Any, ...]  # (segmentation, bbox) pairs
    fingerprint: str


def to_rles(segmentation: Any, bbox: Any, h: int, w: int) -> list[dict]:
    """RLEs for one annotation: polygons, RLE (compressed or not) or a box when there is no shape."""
    from pycocotools import mask as mu

    if isinstance(segmentation, dict):
        if isinstance(segmentation.get("counts"), list):
            return [mu.frPyObjects(segmentation, h, w)]
        return [segmentation]
    rings = [r for r in (segmentation or []) if isinstance(r, list) and len(r) >= 6 and len(r) % 2 == 0]
    if rings:
        return mu.frPyObjects(rings, h, w)
    if not segmentation and isinstance(bbox, list | tuple) and len(bbox) == 4:
        return mu.frPyObjects(np.asarray([bbox], dtype=np.float64), h, w)
    return []


def render(width: int, height: int, annotations: Iterable[tuple[Any, Any]]) -> np.ndarray:
    """Union mask (H, W) uint8 in {0, 255}."""
    from pycocotools import mask as mu

    rles = [r for seg, box in annotations for r in to_rles(seg, box, height, width)]
    if not rles:
        return np.zeros((height, width), dtype=np.uint8)
    merged = mu.merge(rles, intersect=False) if len(rles) > 1 else rles[0]
    return mu.decode(merged).astype(np.uint8) * 255


FINGERPRINT_KEY = "drywall-fingerprint"  # a PNG text chunk: what the mask was rendered from


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """A binary mask as COCO compressed RLE: ``{"size": [height, width], "counts": str}``."""
    from pycocotools import mask as mu

    rle = mu.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("utf-8")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """:func:`encode_rle` undone: a (height, width) uint8 mask of {0, 1}."""
    from pycocotools import mask as mu

    return mu.decode({"size": list(rle["size"]), "counts": str(rle["counts"]).encode("utf-8")})


def save_png_atomic(arr: np.ndarray, path: Path, fingerprint: str | None = None) -> None:
    """Write a PNG under a temporary name in the same folder, then rename (never half a file).

    The fingerprint of its inputs travels in the PNG itself, so a rerun after a run that could not
    save its manifest (a full disk, a kill) still knows which masks are current."""
    info = None
    if fingerprint:
        info = PngImagePlugin.PngInfo()
        info.add_text(FINGERPRINT_KEY, fingerprint)
    with atomic_open(path, "wb") as f:
        Image.fromarray(arr, mode="L").save(f, format="PNG", compress_level=1, pnginfo=info)


def png_fingerprint(path: Path) -> str | None:
    """The fingerprint a mask was rendered with (None: none recorded, or not a readable PNG)."""
    try:
        with Image.open(path) as im:
            return im.text.get(FINGERPRINT_KEY) if im.format == "PNG" else None
    except (OSError, ValueError, SyntaxError):
        return None


def _render_chunk(jobs: list[MaskJob]) -> list[str]:
    for job in jobs:
        save_png_atomic(render(job.width, job.height, job.annotations), Path(job.out), job.fingerprint)
    return [j.out for j in jobs]


def _fingerprint(img: dict, anns: list[tuple[Any, Any]]) -> str:
    payload = json.dumps([RENDERER_VERSION, img.get("width"), img.get("height"), anns], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _split_jobs(split: Split, out_dir: Path) -> tuple[list[MaskJob], list[str]]:
    """Jobs of one split, and what makes any of its entries unrenderable (the validator's own rules)."""
    images, annotations, broken = usable_entries(split)
    problems = [r["entry_error"] for r in broken]
    sizes = {i["id"]: image_size(i) for i in images}
    by_image: dict[Any, list[tuple[Any, Any]]] = {}
    for a in annotations:
        by_image.setdefault(a.get("image_id"), []).append((a.get("segmentation"), a.get("bbox")))
        why = segmentation_problem(a, sizes.get(a.get("image_id")))
        if why:
            problems.append(f"annotation {a.get('id')}: {why}")
    jobs, owner = [], {}
    for img in images:
        size = image_size(img)
        name = img.get("file_name")
        if size is None or not isinstance(name, str):
            problems.append(f"image id {img.get('id')}: width/height or file_name missing or not usable")
            continue
        out = out_dir / split.name / f"{Path(name).stem}.png"
        if out in owner:
            problems.append(f"images '{owner[out]}' and '{name}' would both render to {out}")
            continue
        owner[out] = name
        anns = by_image.get(img["id"], [])
        jobs.append(MaskJob(str(out), size[0], size[1], tuple(anns), _fingerprint(img, anns)))
    return jobs, problems


def plan_jobs(export: Export, out_dir: Path) -> list[MaskJob]:
    """One job per image of every split; output ``out_dir/<split>/<image stem>.png``.

    Anything the validator would refuse as unrenderable is refused here too, by name, before
    any mask is written: a mask is never silently wrong, missing or overwritten by another.
    """
    jobs = []
    for split in export.splits.values():
        split_jobs, problems = _split_jobs(split, out_dir)
        if problems:
            shown = "; ".join(problems[:3])
            raise InputError(
                f"{split.annotation_path}: cannot render masks: {len(problems)} problem(s), e.g. {shown} "
                "(drywall validate lists them all)"
            )
        jobs += split_jobs
    return jobs


@dataclass
class MaskStats:
    rendered: int
    skipped: int
    removed: int
    out_dir: Path


def _load_manifest(out_dir: Path) -> dict[str, str]:
    try:
        return json.loads((out_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_manifest(out_dir: Path, manifest: dict[str, str]) -> None:
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, sort_keys=True))


@dataclass
class MaskPlan:
    """What a render has to do: pending jobs, and the manifest it updates as they finish."""

    out_dir: Path
    todo: list[MaskJob]
    total: int
    removed: int
    manifest: dict[str, str]
    saved_at: float = field(default_factory=time.monotonic)

    def chunks(self, size: int) -> list[list[MaskJob]]:
        return [self.todo[i : i + size] for i in range(0, len(self.todo), size)]

    def record(self, outs: list[str]) -> None:
        """Mark rendered outputs done in the manifest (in memory; :meth:`save` persists it)."""
        fp = {j.out: j.fingerprint for j in self.todo}
        for o in outs:
            self.manifest[os.path.relpath(o, self.out_dir)] = fp[o]

    def save_every(self, seconds: float) -> None:
        """Persist the manifest if the last save is older than ``seconds``."""
        if time.monotonic() - self.saved_at >= seconds:
            _write_manifest(self.out_dir, self.manifest)
            self.saved_at = time.monotonic()

    def save(self) -> MaskStats:
        _write_manifest(self.out_dir, self.manifest)
        return MaskStats(len(self.todo), self.total - len(self.todo), self.removed, self.out_dir)


def plan_masks(export: Export, out_dir: Path) -> MaskPlan:
    """Compare the export with the manifest: pending jobs; masks of images gone from the export removed."""
    jobs = plan_jobs(export, Path(out_dir))
    out_dir = ensure_dir(Path(out_dir))
    remove_stale_temps(out_dir)  # left by a killed run
    manifest = _load_manifest(out_dir)
    rel = {j.out: os.path.relpath(j.out, out_dir) for j in jobs}
    for j in jobs:  # masks the manifest does not know (it was never saved): read their own fingerprint
        if rel[j.out] not in manifest and Path(j.out).is_file() and png_fingerprint(Path(j.out)) == j.fingerprint:
            manifest[rel[j.out]] = j.fingerprint
    todo = [j for j in jobs if manifest.get(rel[j.out]) != j.fingerprint or not Path(j.out).is_file()]
    wanted = set(rel.values())
    stale = [k for k in manifest if k not in wanted]
    for key in stale:
        (out_dir / key).unlink(missing_ok=True)
        manifest.pop(key)
    return MaskPlan(out_dir, todo, len(jobs), len(stale), manifest)


def render_chunk(jobs: list[MaskJob]) -> list[str]:
    """Render and write a batch of masks; returns their paths (the unit of work of any executor)."""
    return _render_chunk(jobs)


LOCK_FILE = ".drywall-masks.lock"


@contextlib.contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    """One renderer per mask folder at a time: two ingests of one export on one host share the folder,
    and the second waits (then finds the masks made) instead of deleting the first's temporary files."""
    out_dir = ensure_dir(Path(out_dir))
    with open(out_dir / LOCK_FILE, "a") as lock:  # a new open file: flock excludes other processes and threads
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def render_masks(export: Export, out_dir: Path, workers: int = 0, chunk: int = 32, progress: bool = True) -> MaskStats:
    """Render every image's mask under ``out_dir``; unchanged ones are skipped, stale ones removed."""
    with _exclusive(Path(out_dir)):
        return _render_masks(export, out_dir, workers, chunk, progress)


def _render_masks(export: Export, out_dir: Path, workers: int, chunk: int, progress: bool) -> MaskStats:
    plan = plan_masks(export, out_dir)
    workers = workers or os.cpu_count() or 1
    chunks = plan.chunks(chunk)
    bar = tqdm(total=len(plan.todo), desc="masks", unit="img", disable=None if progress and plan.todo else True)
    try:
        if workers == 1 or len(chunks) <= 1:
            for c in chunks:
                plan.record(_render_chunk(c))
                bar.update(len(c))
                plan.save_every(SAVE_EVERY_S)
        else:
            for outs in imap_processes(_render_chunk, chunks, workers):
                plan.record(outs)
                bar.update(len(outs))
                plan.save_every(SAVE_EVERY_S)  # a kill loses at most a few seconds of work
    except BaseException:
        remove_stale_temps(plan.out_dir)  # workers stopped mid-write leave nothing behind
        raise
    finally:
        bar.close()
        stats = plan.save()  # record what finished, even on failure
    return stats
