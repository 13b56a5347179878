"""Field predictions (masks + uncertainty summary in the store) and the label queue's picking and polygons."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from drywall_core.base.storage import LocalStore
from drywall_core.field import label_queue as lq
from drywall_core.field import predictions as field
from drywall_core.field.drift import IMAGE_EXTENSIONS
from drywall_core.model.metrics import iou

PROMPTS = ["segment crack", "segment taping area"]


def test_mask_stats_measure_uncertainty_and_confidence() -> None:
    sure = np.array([[0.0, 0.0], [1.0, 1.0]])
    unsure = np.full((2, 2), 0.5)
    s, u = field.mask_stats(sure, 0.5), field.mask_stats(unsure, 0.5)
    assert s["fg_fraction"] == 0.5 and s["uncertain_share"] == 0.0
    assert s["mean_confidence"] == pytest.approx(1.0) and s["mean_entropy"] == pytest.approx(0.0, abs=1e-5)
    assert u["uncertain_share"] == 1.0 and u["mean_entropy"] == pytest.approx(1.0)
    band = field.mask_stats(np.array([0.29, 0.3, 0.7, 0.71]), 0.5)
    assert band["uncertain_share"] == 0.5  # [0.3, 0.7] inclusive


@pytest.mark.parametrize(
    "mask",
    [
        np.pad(np.ones((1, 120)), ((40, 59), (10, 70))),  # a one-pixel crack
        np.eye(100, 200),  # a diagonal one-pixel crack
        np.pad(np.ones((1, 1)), ((5, 94), (5, 194))),  # one pixel
        ndimage.gaussian_filter(np.random.default_rng(0).random((100, 200)), 3) > 0.52,  # ragged blobs
    ],
)
def test_polygons_rasterise_back_to_the_mask(mask: np.ndarray) -> None:
    mask = mask.astype(bool)
    polys = lq.mask_polygons(mask)
    assert polys and all(len(p) >= 6 and len(p) % 2 == 0 for p in polys)
    back = lq.rasterise(polys, *mask.shape)
    filled = ndimage.binary_fill_holes(mask)
    assert iou(back, filled) == 1.0


def test_polygons_fill_holes_and_empty_masks_give_none() -> None:
    ring = np.zeros((50, 50), bool)
    ring[10:40, 10:40] = True
    ring[20:30, 20:30] = False
    back = lq.rasterise(lq.mask_polygons(ring), 50, 50)
    assert back[25, 25] and back.sum() == 900  # no holes in COCO polygons: the outline of the filled mask
    assert lq.mask_polygons(np.zeros((8, 8))) == []


def _summary(rows: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"image": n, "sha256": sha, "prompt": "segment crack", "uncertain_share": u, "mean_entropy": e}
            for n, sha, u, e in rows
        ]
    )


def test_pick_ranks_by_uncertainty_breaks_ties_by_disagreement_and_skips_queued() -> None:
    frame = _summary([("a", "A", 0.10, 0.5), ("b", "B", 0.40, 0.2), ("c", "C", 0.40, 0.9), ("d", "D", 0.30, 0.9)])
    assert list(lq.pick(frame, "segment crack", 3)["image"]) == ["c", "b", "d"]  # tie on share: entropy
    # champion/challenger disagreement decides a tie before entropy does
    assert list(lq.pick(frame, "segment crack", 2, disagreement={"B": 0.8, "C": 0.1})["image"]) == ["b", "c"]
    assert list(lq.pick(frame, "segment crack", 2, exclude={"C"})["image"]) == ["b", "d"]
    assert lq.pick(frame, "segment taping area", 2).empty


@pytest.fixture
def field_photos(cracks_export: Path, tmp_path: Path) -> Path:
    """Four real site photos, two of them under the same file name in different folders."""
    src = sorted((cracks_export / "valid").glob("*.jpg"))[:4]
    out = tmp_path / "field"
    for i, p in enumerate(src):
        dst = out / f"day{i % 2}" / f"IMG_{i // 2:04d}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
    return out


def test_field_predictions_are_stored_merged_and_not_repeated(tiny_model_dir: Path, field_photos: Path, tmp_path):
    from drywall_core.model.load import load_model
    from drywall_core.model.runtime import for_inference

    loaded = for_inference(load_model(tiny_model_dir), "int8")
    store = LocalStore(tmp_path / "store")
    photos = field.field_images(field_photos, IMAGE_EXTENSIONS)
    (field_photos / "broken.jpg").write_bytes(b"not a jpeg")
    photos_and_bad = field.field_images(field_photos, IMAGE_EXTENSIONS)
    first = field.predict_field(loaded, photos_and_bad[:3], PROMPTS, tmp_path / "run1", "v1", run="r1", progress=False)
    assert [s["image"] for s in first.skipped] == ["broken.jpg"]
    assert len(first.frame) == 2 * len(PROMPTS)  # two readable images, every prompt
    pub = field.publish_predictions(store, "v1", first)
    assert pub["rows"] == 4 and pub["images"] == 2

    summary = field.read_summary(store, "v1")
    assert set(summary.columns) == set(field.COLUMNS)
    for row in summary.itertuples():
        mask = np.asarray(Image.open(store.root / field.predictions_key("v1", row.mask)))
        assert mask.shape == (row.height, row.width) and set(np.unique(mask)) <= {0, 255}
        assert row.fg_fraction == pytest.approx((mask > 0).mean(), abs=1e-9)
        assert 0 <= row.uncertain_share <= 1 and 0 <= row.mean_entropy <= 1
    # the two IMG_0000.jpg photos (different days, different content) get different mask keys
    assert summary["mask"].nunique() == len(summary)

    done = field.predicted_shas(summary, PROMPTS)
    second = field.predict_field(loaded, photos, PROMPTS, tmp_path / "run2", "v1", run="r2", done=done, progress=False)
    assert second.already == 2 and second.frame["sha256"].nunique() == 2  # only the two not predicted yet
    field.publish_predictions(store, "v1", second)
    merged = field.read_summary(store, "v1")
    assert merged["sha256"].nunique() == 4 and len(merged) == 8 and set(merged["run"]) == {"r1", "r2"}
    top = field.most_uncertain(merged, 3, "segment crack")
    assert list(top["uncertain_share"]) == sorted(top["uncertain_share"], reverse=True)


def test_shadow_compare_measures_mask_agreement(tiny_model_dir: Path, field_photos: Path, tmp_path: Path) -> None:
    from drywall_core.model.load import load_model
    from drywall_core.model.runtime import for_inference
    from drywall_core.model.tiny import init_tiny
    from drywall_core.release.shadow import shadow_compare

    photos = field.field_images(field_photos, IMAGE_EXTENSIONS)
    champion = for_inference(load_model(tiny_model_dir), "int8")
    same = shadow_compare(champion, champion, photos, PROMPTS)
    assert same["images"] == 4 and set(same["prompts"]) == set(PROMPTS)
    assert all(r["agreement"] == 1.0 and r["strong_disagreement_share"] == 0.0 for r in same["prompts"].values())
    other = for_inference(load_model(init_tiny(tmp_path / "other", seed=1)), "int8")
    near = shadow_compare(other, champion, photos, PROMPTS)
    assert all(0.5 < r["agreement"] < 1.0 for r in near["prompts"].values())  # other weights, nearly the same masks
    # each model's masks are cut at its own threshold: a candidate that answers "nothing" disagrees strongly
    other.manifest = {"metrics": {"thresholds": dict.fromkeys(PROMPTS, 0.999)}}
    far = shadow_compare(other, champion, photos, PROMPTS)
    assert all(r["agreement"] < 0.5 and r["strong_disagreement_share"] == 1.0 for r in far["prompts"].values())


def test_disagreement_with_a_challenger_ranks_equally_uncertain_images(
    tiny_model_dir: Path, field_photos: Path, tmp_path: Path
) -> None:
    from drywall_core.model.load import load_model
    from drywall_core.model.runtime import for_inference

    champion = for_inference(load_model(tiny_model_dir), "int8")
    photos = field.field_images(field_photos, IMAGE_EXTENSIONS)
    run = field.predict_field(champion, photos, ["segment crack"], tmp_path / "p", "v1", progress=False)
    paths = {p.sha256: p.path for p in photos}
    same = lq.disagreement(champion, run.frame, paths, tmp_path / "p", "segment crack")
    assert set(same) == set(paths) and all(v == 0.0 for v in same.values())
    challenger = for_inference(load_model(tiny_model_dir), "int8")
    challenger.manifest = {"metrics": {"thresholds": {"segment crack": 0.999}}}  # answers "nothing"
    apart = lq.disagreement(challenger, run.frame, paths, tmp_path / "p", "segment crack")
    assert all(v > 0.5 for v in apart.values())


class _FlakyRoboflow:
    """Fault injection: the annotation call fails while ``down`` (a dropped connection)."""

    api_key = "k-secret"

    def __init__(self) -> None:
        self.uploads: list[str] = []
        self.annotated: list[str] = []
        self.down = True

    def upload(self, image: Path, batch: str, tags: list[str]) -> str:
        self.uploads.append(image.name)
        return f"id{len(self.uploads)}"

    def annotate(self, image_id: str, name: str, coco: dict, batch: str) -> None:
        if self.down:
            raise ConnectionError("connection reset by peer")
        self.annotated.append(image_id)


def test_a_failed_annotation_is_finished_on_the_next_run_without_uploading_again(tmp_path: Path) -> None:
    photo, mask = tmp_path / "wall.png", tmp_path / "wall-mask.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(photo)
    m = np.zeros((20, 30), np.uint8)
    m[5:9, 3:25] = 255
    Image.fromarray(m).save(mask)
    item = lq.QueueItem(photo, "site/wall.png", "ab" * 32, mask, "segment crack", 0.4, 0.5, "v1")
    store, client = LocalStore(tmp_path / "store"), _FlakyRoboflow()

    def run() -> lq.QueueReport:
        return lq.queue_for_labelling(store, client, [item], "ws", "proj", "crack", "b1", 10, retries=1, backoff_s=0)

    failed = run()
    assert [name for name, _ in failed.failed] == ["site/wall.png"] and "connection reset" in failed.failed[0][1]
    assert client.uploads == ["wall.png"] and lq.queued_shas(store, "ws", "proj") == set()
    client.down = False
    done = run()
    assert client.uploads == ["wall.png"], "the image is not uploaded twice"
    assert client.annotated == ["id1"], "only the annotation is sent again"
    assert [e["image"] for e in done.queued] == ["site/wall.png"] and done.queued[0]["regions"] == 1
    assert run().already == ["site/wall.png"] and lq.queued_shas(store, "ws", "proj") == {"ab" * 32}
    assert lq.queued_on(store, "ws", "proj", lq.today()) == 1

    # a record written before the annotated/ markers still counts; only records without one are read
    store.put_bytes(lq.record_key("ws", "proj", "cd" * 32), json.dumps({"annotated": True}).encode())
    reads: list[str] = []
    get_bytes = store.get_bytes
    store.get_bytes = lambda key: reads.append(key) or get_bytes(key)  # type: ignore[method-assign]
    assert lq.queued_shas(store, "ws", "proj") == {"ab" * 32, "cd" * 32}
    assert reads == [lq.record_key("ws", "proj", "cd" * 32)]
