"""Active learning: send the field photos the model is least sure of to Roboflow for labelling.

Each picked image is uploaded through the ``roboflow`` SDK into the dataset's project, in a dated
batch, with the predicted mask as a polygon pre-annotation marked as a prediction, so labellers
correct rather than draw. The queue is idempotent by image content: a record per sha256 under
``label-queue/<workspace>/<project>/`` in the artifact store says what was sent, so an image is never
queued twice, and an image whose upload succeeded but whose annotation did not gets only the
annotation on the next run. Transient failures are retried with backoff; every failure is
reported per image, and the API key never appears in a message.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from drywall_core.base.errors import DrywallError, InputError
from drywall_core.base.fsutil import atomic_write_text
from drywall_core.base.storage import ArtifactStore, NotFound
from drywall_core.data.images import displayed_size, upright
from drywall_core.data.sources.roboflow_pull import Redacting, point_sdk_at, redact, with_retries
from drywall_core.field.predictions import row_measures

log = logging.getLogger(__name__)
QUEUE = "label-queue"


# -- masks as polygons -------------------------------------------------------------------------
def mask_polygons(mask: np.ndarray, decimals: int = 2) -> list[list[float]]:
    """COCO polygons ``[x1, y1, x2, y2, ...]`` whose rasterisation is the (hole-filled) mask.

    COCO and Roboflow polygons hold no holes, so holes are filled first. Contours are traced on a
    2x nearest-neighbour copy and mapped back to pixel-corner coordinates, which keeps one-pixel
    cracks (a zero-area outline at 1x) and gives back the mask pixel for pixel.
    """
    filled = ndimage.binary_fill_holes(np.asarray(mask) > 0).astype(np.uint8)
    if not filled.any():
        return []
    up = np.kron(filled, np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        pts = (c[:, 0, :].astype(np.float64) + 0.5) / 2
        if len(pts) >= 3:
            polys.append(pts.ravel().round(decimals).tolist())
    return polys


def rasterise(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """The mask COCO tools draw from ``polygons`` (pycocotools), for checks."""
    from pycocotools import mask as mask_utils

    if not polygons:
        return np.zeros((height, width), dtype=bool)
    rle = mask_utils.merge(mask_utils.frPyObjects([list(p) for p in polygons], height, width))
    return mask_utils.decode(rle).astype(bool)


def coco_annotation(image_name: str, width: int, height: int, polygons: list[list[float]], label: str) -> dict:
    """A one-image COCO document: one annotation per connected region, all of ``label``."""
    anns = []
    for i, poly in enumerate(polygons, start=1):
        xs, ys = poly[0::2], poly[1::2]
        x0, y0 = min(xs), min(ys)
        area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
        anns.append(
            {
                "id": i,
                "image_id": 1,
                "category_id": 1,
                "segmentation": [poly],
                "bbox": [round(x0, 2), round(y0, 2), round(max(xs) - x0, 2), round(max(ys) - y0, 2)],
                "area": round(area, 2),
                "iscrowd": 0,
            }
        )
    return {
        "info": {"description": "drywall-qa model prediction (pre-annotation)"},
        "images": [{"id": 1, "file_name": image_name, "width": width, "height": height}],
        "categories": [{"id": 1, "name": label, "supercategory": "none"}],
        "annotations": anns,
    }


# -- picking ------------------------------------------------------------------------------------
def pick(
    summary: pd.DataFrame,
    prompt: str,
    k: int,
    exclude: set[str] | None = None,
    disagreement: dict[str, float] | None = None,
) -> pd.DataFrame:
    """The ``k`` most uncertain images for ``prompt`` (uncertain share, then mean entropy); ties
    broken by champion/challenger disagreement (1 - IoU of their masks) when it is given."""
    rows = summary[(summary["prompt"] == prompt) & ~summary["sha256"].isin(exclude or set())].copy()
    rows["disagreement"] = rows["sha256"].map(disagreement or {}).fillna(0.0)
    rows["_share"] = rows["uncertain_share"].round(3)
    ranked = rows.sort_values(
        ["_share", "disagreement", "mean_entropy", "image"], ascending=[False, False, False, True]
    ).drop_duplicates("sha256")
    return ranked.drop(columns="_share").head(max(k, 0))


def disagreement(
    challenger: Any, summary: pd.DataFrame, images: dict[str, Path], masks_root: Path, prompt: str, batch_size: int = 8
) -> dict[str, float]:
    """1 - IoU between the champion's stored masks and a challenger's, per image (sha256), for ``prompt``:
    where two good models disagree, a label teaches the most."""
    from drywall_core.data.images import open_rgb
    from drywall_core.model.metrics import iou
    from drywall_core.model.runtime import probabilities_for

    rows = summary[(summary["prompt"] == prompt) & summary["sha256"].isin(set(images))].drop_duplicates("sha256")
    threshold = challenger.threshold_for(prompt)
    out: dict[str, float] = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows.iloc[start : start + batch_size]
        pils = [open_rgb(images[sha]) for sha in chunk["sha256"]]
        for row, prob in zip(chunk.itertuples(), probabilities_for(challenger, pils, prompt), strict=True):
            champion_mask = np.asarray(Image.open(Path(masks_root) / row.mask)) > 0
            out[row.sha256] = 1.0 - iou(prob >= threshold, champion_mask)
    return out


# -- the queue record ---------------------------------------------------------------------------
class LabelQueueError(DrywallError):
    exit_code = 1


@dataclass
class QueueItem:
    """One image to queue: the photo, its predicted mask, what it was picked for."""

    image: Path
    name: str
    sha256: str
    mask: Path
    prompt: str
    uncertain_share: float
    mean_entropy: float
    model_version: str
    embedding: np.ndarray | None = field(default=None, repr=False)  # the photo's image embedding
    n_cracks: int | None = None  # crack prompts: the predicted mask's measurements
    total_length_px: float | None = None
    max_width_px: float | None = None


@dataclass
class QueueReport:
    batch: str
    queued: list[dict[str, Any]] = field(default_factory=list)
    already: list[str] = field(default_factory=list)  # image names queued before (by content)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image name, reason)
    over_limit: list[str] = field(default_factory=list)  # picked but past the per-day limit
    near_duplicates: list[str] = field(default_factory=list)  # uncertain, but like a photo picked/queued/trained on


def record_key(workspace: str, project: str, sha256: str) -> str:
    return f"{QUEUE}/{workspace}/{project}/images/{sha256}.json"


def day_prefix(workspace: str, project: str, day: str) -> str:
    return f"{QUEUE}/{workspace}/{project}/days/{day}/"


def annotated_prefix(workspace: str, project: str) -> str:
    return f"{QUEUE}/{workspace}/{project}/annotated/"


def queued_shas(store: ArtifactStore, workspace: str, project: str) -> set[str]:
    """Images (sha256) fully queued in this project: uploaded and pre-annotated.

    One listing of the empty ``annotated/<sha256>`` markers; only records without a marker (an
    annotation that failed, or a record written before the markers) are read.
    """
    marked = {Path(k).name for k in store.list(annotated_prefix(workspace, project))}
    out = set(marked)
    for key in store.list(f"{QUEUE}/{workspace}/{project}/images/"):
        if Path(key).stem in marked:
            continue
        with contextlib.suppress(NotFound, json.JSONDecodeError):
            if json.loads(store.get_bytes(key)).get("annotated"):
                out.add(Path(key).stem)
    return out


def embedding_key(workspace: str, project: str, sha256: str) -> str:
    return f"{QUEUE}/{workspace}/{project}/embeddings/{sha256}.npy"


def queued_embeddings(store: ArtifactStore, workspace: str, project: str) -> np.ndarray | None:
    """Image embeddings of the photos queued in this project (stored as each was queued)."""
    vectors = []
    for key in store.list(f"{QUEUE}/{workspace}/{project}/embeddings/"):
        with contextlib.suppress(NotFound, ValueError, OSError):
            vectors.append(np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False))
    return np.stack(vectors) if vectors else None


def _npy(vector: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(vector, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def queued_on(store: ArtifactStore, workspace: str, project: str, day: str) -> int:
    return len(store.list(day_prefix(workspace, project, day)))


def default_batch(day: str | None = None) -> str:
    return f"drywall-qa-{day or today()}"


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


# -- uploading ----------------------------------------------------------------------------------
class RoboflowProjectClient:
    """The SDK's project handle, with the SDK's prints kept off stdout and the key masked."""

    def __init__(self, workspace: str, project: str, api_key: str, api_url: str | None = None) -> None:
        point_sdk_at(api_url)
        self.api_key = api_key
        self._err = Redacting(sys.stderr, api_key)
        import roboflow

        with contextlib.redirect_stdout(self._err), contextlib.redirect_stderr(self._err):
            self.project = roboflow.Roboflow(api_key=api_key).workspace(workspace).project(project)

    def upload(self, image: Path, batch: str, tags: list[str]) -> str:
        with contextlib.redirect_stdout(self._err), contextlib.redirect_stderr(self._err):
            got, _, _ = self.project.upload_image(str(image), batch_name=batch, split="train", tag_names=tags)
        image_id = (got or {}).get("id")
        if not image_id:
            raise LabelQueueError(f"upload of {image.name} returned no image id")
        return str(image_id)

    def annotate(self, image_id: str, name: str, coco: dict, batch: str) -> None:
        raw = {"name": f"{Path(name).stem}.json", "rawText": json.dumps(coco)}
        with contextlib.redirect_stdout(self._err), contextlib.redirect_stderr(self._err):
            self.project.save_annotation(annotation_path=raw, image_id=image_id, job_name=batch, is_prediction=True)


def annotation_for(item: QueueItem, label: str) -> dict:
    """The COCO pre-annotation, in the photo's displayed orientation (like the mask and the upload)."""
    mask = np.asarray(Image.open(item.mask)) > 0
    with Image.open(item.image) as im:
        width, height = displayed_size(im)
    if mask.shape != (height, width):
        raise InputError(f"{item.mask}: mask is {mask.shape[1]}x{mask.shape[0]}, image {item.name} {width}x{height}")
    return coco_annotation(Path(item.name).name, width, height, mask_polygons(mask), label)


def write_dry_run(items: Sequence[QueueItem], label: str, batch: str, out: Path) -> QueueReport:
    """What would be queued, written to ``out`` (images, COCO pre-annotations, queue.json); no upload."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(exist_ok=True)
    report = QueueReport(batch)
    for item in items:
        dst = out / "images" / f"{item.sha256[:16]}{item.image.suffix.lower()}"
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(upright(item.image, Path(tmp)), dst)
        coco = annotation_for(item, label)
        atomic_write_text(out / "annotations" / f"{item.sha256[:16]}.json", json.dumps(coco))
        report.queued.append({**_entry(item), "regions": len(coco["annotations"]), "file": dst.name})
    atomic_write_text(out / "queue.json", json.dumps({"batch": batch, "images": report.queued}, indent=2))
    return report


def _entry(item: QueueItem) -> dict[str, Any]:
    return {
        "image": item.name,
        "sha256": item.sha256,
        "prompt": item.prompt,
        "uncertain_share": round(item.uncertain_share, 4),
        "mean_entropy": round(item.mean_entropy, 4),
        "model_version": item.model_version,
        **(
            {}
            if item.n_cracks is None
            else {"n_cracks": item.n_cracks, "total_length_px": item.total_length_px, "max_width_px": item.max_width_px}
        ),
    }


def queue_for_labelling(
    store: ArtifactStore,
    client: RoboflowProjectClient,
    items: Sequence[QueueItem],
    workspace: str,
    project: str,
    label: str,
    batch: str,
    per_day: int,
    retries: int = 4,
    backoff_s: float = 1.0,
) -> QueueReport:
    """Upload each item with its pre-annotation unless its content is queued already.

    The record is written after each step (uploaded, then annotated), so a rerun resumes at the
    step that failed and never uploads an image twice. At most ``per_day`` images per project are
    queued per UTC day, counted across runs.
    """
    report = QueueReport(batch)
    day = today()
    room = max(per_day - queued_on(store, workspace, project, day), 0)
    with tempfile.TemporaryDirectory() as tmp:  # upright copies of EXIF-rotated photos
        for item in items:
            key = record_key(workspace, project, item.sha256)
            try:
                record = json.loads(store.get_bytes(key))
            except NotFound:
                record = None
            if record and record.get("annotated"):
                report.already.append(item.name)
                continue
            if record is None and room <= 0:
                report.over_limit.append(item.name)
                continue
            try:
                if record is None:
                    image_id = with_retries(
                        f"roboflow {workspace}/{project}: upload {item.name}",
                        lambda item=item: client.upload(
                            upright(item.image, Path(tmp)), batch, ["drywall-qa", "model-uncertain"]
                        ),
                        client.api_key,
                        retries,
                        backoff_s,
                        error=LabelQueueError,
                    )
                    record = {**_entry(item), "image_id": image_id, "batch": batch, "day": day, "annotated": False}
                    store.put_bytes(key, json.dumps(record, indent=2).encode())
                    store.put_bytes(day_prefix(workspace, project, day) + item.sha256, b"")
                    room -= 1
                coco = annotation_for(item, label)
                with_retries(
                    f"roboflow {workspace}/{project}: pre-annotate {item.name}",
                    lambda c=coco, r=record, n=item.name: client.annotate(r["image_id"], n, c, r["batch"]),
                    client.api_key,
                    retries,
                    backoff_s,
                    error=LabelQueueError,
                )
                record = {**record, "annotated": True, "regions": len(coco["annotations"])}
                store.put_bytes(key, json.dumps(record, indent=2).encode())
                if item.embedding is not None:  # later batches skip its near-duplicates
                    store.put_bytes(embedding_key(workspace, project, item.sha256), _npy(item.embedding))
                store.put_bytes(annotated_prefix(workspace, project) + item.sha256, b"")
                report.queued.append(record)
            except (LabelQueueError, InputError, OSError) as exc:
                report.failed.append((item.name, redact(str(exc), client.api_key)))
    return report


def select(
    store: ArtifactStore,
    frame: pd.DataFrame,
    images: dict[str, Path],
    masks_root: Path,
    workspace: str,
    project: str,
    prompt: str,
    k: int,
    challenger: Any = None,
    diverse: Diversity | None = None,
) -> Selection:
    """The ``k`` most uncertain photos for ``prompt`` not yet queued in this project (ties broken by
    disagreement with ``challenger``, a loaded model, when given), and how many were queued before.
    With ``diverse``: no near-duplicates of each other, of queued or of training photos, spread over
    the embedding space (:mod:`drywall_core.field.diversity`)."""
    from drywall_core.field.diversity import diverse_order

    split = disagreement(challenger, frame, images, masks_root, prompt) if challenger is not None else None
    exclude = queued_shas(store, workspace, project)
    pool = k * diverse.pool_factor if diverse is not None else k
    picks = pick(frame, prompt, pool, exclude=exclude, disagreement=split)
    if diverse is None or picks.empty:
        return Selection(items_from(picks, images, masks_root), len(exclude))
    vectors = diverse.embed([images[sha] for sha in picks["sha256"]], list(picks["sha256"]))
    known = [v for v in (queued_embeddings(store, workspace, project), diverse.trained) if v is not None and len(v)]
    order, skipped = diverse_order(vectors, k, np.concatenate(known) if known else None, diverse.max_similarity)
    items = items_from(picks.iloc[order], images, masks_root)
    for item, i in zip(items, order, strict=True):
        item.embedding = vectors[i]
    dupes = [(str(picks.iloc[x.index]["image"]), x.of, round(x.similarity, 4)) for x in skipped]
    return Selection(items, len(exclude), dupes)


@dataclass
class Diversity:
    """How batches are spread: the photo embeddings (paths, sha256s -> vectors), the training
    photos' embeddings, the similarity that makes a near-duplicate, the candidate pool size."""

    embed: Any  # Callable[[list[Path], list[str]], np.ndarray]
    trained: np.ndarray | None = None
    max_similarity: float = 0.95
    pool_factor: int = 3


@dataclass
class Selection:
    items: list[QueueItem]
    before: int  # photos queued in this project before
    near_duplicates: list[tuple[str, str, float]] = field(default_factory=list)  # (image, of what, cosine)


def items_from(picks: pd.DataFrame, images: dict[str, Path], masks_root: Path) -> list[QueueItem]:
    """Queue items for picked summary rows (``images``: sha256 -> local photo)."""
    return [
        QueueItem(
            image=images[row.sha256],
            name=row.image,
            sha256=row.sha256,
            mask=Path(masks_root) / row.mask,
            prompt=row.prompt,
            uncertain_share=float(row.uncertain_share),
            mean_entropy=float(row.mean_entropy),
            model_version=row.model_version,
            **(row_measures(row) or {}),
        )
        for row in picks.itertuples()
    ]
