"""`drywall label-queue`: the real roboflow SDK uploads the most uncertain photos to a loopback
stand-in of the Roboflow API, each with its predicted mask as a polygon pre-annotation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from drywall_core.field import label_queue as lq
from drywall_core.field import predictions as field
from drywall_core.field.drift import IMAGE_EXTENSIONS
from drywall_core.model.measure import measure_file
from drywall_core.model.metrics import iou
from tests.fakes.roboflow_api import FakeRoboflow

pytestmark = pytest.mark.integration
API_KEY = "testKey-queue42"
DRYWALL = Path(sys.executable).parent / "drywall"
WS, PROJECT = "site-qa", "cracks-3ii36-johwn"  # the crack dataset's project in the registry


@pytest.fixture
def photos(cracks_export: Path, tmp_path: Path) -> Path:
    out = tmp_path / "field"
    out.mkdir()
    for p in sorted((cracks_export / "valid").glob("*.jpg"))[:7]:
        shutil.copyfile(p, out / p.name)
    return out


def _queue(fake: FakeRoboflow, model: Path, images: Path, home: Path, *extra: str, **env_extra: str):
    env = {
        **os.environ,
        "DRYWALL_HOME": str(home),
        "DRYWALL_ROBOFLOW_API_URL": fake.url,
        "DRYWALL_ROBOFLOW_API_KEY": API_KEY,
        "DRYWALL_PULL_RETRIES": "2",
        "DRYWALL_PULL_BACKOFF_S": "0.05",
        "DRYWALL_LABEL_QUEUE__DIVERSE": "false",  # the ranking by uncertainty alone; diversity is tested below
        **env_extra,
    }
    cmd = [str(DRYWALL), "label-queue", "--model", str(model), "--images", str(images)]
    cmd += ["--workspace", WS, "--project", PROJECT, *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _expected_masks(model: Path, images: Path, tmp: Path) -> tuple[dict, object]:
    """The masks the command predicts (same model, int8 as on the command line), by image name."""
    from drywall_core.model.load import load_model
    from drywall_core.model.runtime import for_inference

    loaded = for_inference(load_model(model), "int8")
    run = field.predict_field(loaded, field.field_images(images, IMAGE_EXTENSIONS), ["segment crack"], tmp, "x")
    return {r.image: tmp / r.mask for r in run.frame.itertuples()}, run.frame


def test_label_queue_uploads_uncertain_images_with_prediction_polygons(
    tiny_model_dir: Path, photos: Path, tmp_path: Path
) -> None:
    from PIL import Image

    home = tmp_path / "home"
    masks, frame = _expected_masks(tiny_model_dir, photos, tmp_path / "expected")
    ranked = list(lq.pick(frame, "segment crack", 7)["image"])
    with FakeRoboflow(WS, PROJECT, 1, b"", API_KEY) as fake:
        dry = _queue(
            fake,
            tiny_model_dir,
            photos,
            home,
            "--top",
            "3",
            "--dry-run",
            str(tmp_path / "dry"),
            "--challenger",
            str(tiny_model_dir),  # agrees fully with the model: the ranking stays
        )
        assert dry.returncode == 0, dry.stderr
        planned = json.loads((tmp_path / "dry" / "queue.json").read_text())
        assert [e["image"] for e in planned["images"]] == ranked[:3] and not fake.uploads
        for e in planned["images"]:  # a crack prompt's entries carry the predicted mask's measurements
            m = measure_file(masks[e["image"]])
            assert (e["n_cracks"], e["total_length_px"]) == (m.n_cracks, pytest.approx(m.total_length_px))
            assert f"{e['n_cracks']} crack(s)" in dry.stdout

        fake.fail_uploads_next = 100  # Roboflow down: every attempt fails, each image is reported
        down = _queue(fake, tiny_model_dir, photos, home, "--top", "3")
        assert down.returncode == 1 and down.stderr.count("not queued") == 3, down.stderr
        assert "failed after 3 attempt(s)" in down.stderr and not fake.uploads

        fake.fail_uploads_next, fake.upload_attempts = 1, 0  # back up; a 503 on the first upload is retried
        first = _queue(fake, tiny_model_dir, photos, home, "--top", "3")
        assert first.returncode == 0, first.stdout + first.stderr
        batch = f"drywall-qa-{datetime.now(UTC):%Y-%m-%d}"
        assert [u["name"] for u in fake.uploads] == ranked[:3]
        assert {u["batch"] for u in fake.uploads} == {batch} and fake.upload_attempts == 4
        assert len(fake.annotations) == 3
        for ann in fake.annotations:
            upload = next(u for u in fake.uploads if u["id"] == ann["image_id"])
            assert ann["prediction"] is True and ann["job"] == batch
            coco = ann["coco"]
            assert coco["images"][0]["file_name"] == upload["name"] and coco["categories"][0]["name"] == "crack"
            img = coco["images"][0]
            polys = [seg for a in coco["annotations"] for seg in a["segmentation"]]
            predicted = np.asarray(Image.open(masks[upload["name"]])) > 0
            assert iou(lq.rasterise(polys, img["height"], img["width"]), predicted) >= 0.9

        # a second run queues the next most uncertain images, never one already queued; 5 a day at most
        second = _queue(fake, tiny_model_dir, photos, home, "--top", "3", DRYWALL_LABEL_QUEUE__PER_DAY="5")
        assert second.returncode == 0, second.stderr
        names = [u["name"] for u in fake.uploads]
        assert names == ranked[:5] and len({u["sha256"] for u in fake.uploads}) == 5
        assert "left for tomorrow" in second.stderr
        for out in (dry, down, first, second):
            assert API_KEY not in out.stdout + out.stderr


def test_batches_hold_no_near_duplicates_of_each_other_or_of_queued_photos(
    tiny_model_dir: Path, cracks_export: Path, tmp_path: Path
) -> None:
    """Field photos with planted near-duplicates (the same pixels under another file: saved as PNG,
    and with other metadata): a batch holds at most one of them, and a later batch none of a queued
    photo's copies. (Crops and recompressions need a trained encoder to look alike; the tiny random
    model's embeddings do not see them as copies: bench/label_diversity.py is the one-liner.)"""
    from PIL import Image

    folder = tmp_path / "field"
    folder.mkdir()
    by_source: dict[str, Path] = {}
    for p in sorted((cracks_export / "valid").glob("*.jpg")):
        by_source.setdefault(p.name.split(".rf.")[0], p)  # one photo per source photo
    distinct = list(by_source.values())[:6]
    for p in distinct:
        shutil.copyfile(p, folder / p.name)
    original = Image.open(distinct[0])
    original.save(folder / "copy-as.png")
    data, note = distinct[0].read_bytes(), b"re-uploaded from the site tablet"
    comment = b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note  # a JPEG comment: other bytes, same pixels
    (folder / "copy-meta.jpg").write_bytes(data[:2] + comment + data[2:])
    copies = {"copy-as.png": None, "copy-meta.jpg": None}
    group = {distinct[0].name, *copies}
    with FakeRoboflow(WS, PROJECT, 1, b"", API_KEY) as fake:
        # the tiny random model puts some distinct photos at cosine 0.95; copies of the same pixels at 1.0
        on = {"DRYWALL_LABEL_QUEUE__DIVERSE": "true", "DRYWALL_LABEL_QUEUE__MAX_SIMILARITY": "0.999"}
        dry = _queue(fake, tiny_model_dir, folder, tmp_path / "home", "--top", "5", "--dry-run", tmp_path / "dry", **on)
        assert dry.returncode == 0, dry.stderr
        picked = [e["image"] for e in json.loads((tmp_path / "dry" / "queue.json").read_text())["images"]]
        assert len(picked) >= 3 and len(set(picked) & group) <= 1, picked
        assert "near-duplicate of a photo in this batch" in dry.stderr

        first = _queue(fake, tiny_model_dir, folder, tmp_path / "home", "--top", "6", **on)  # six walls
        assert first.returncode == 0, first.stderr
        queued = [u["name"] for u in fake.uploads]
        assert len(queued) == 6 and len(set(queued) & group) == 1, queued
        second = _queue(fake, tiny_model_dir, folder, tmp_path / "home", "--top", "5", **on)
        assert second.returncode == 0, second.stderr
        assert [u["name"] for u in fake.uploads] == queued, "only copies of queued walls were left"
        assert "near-duplicate of a photo already queued or trained on" in second.stderr
