"""A phone photo stored sideways (EXIF orientation 6) is queued in its displayed orientation: the
uploaded pixels, the predicted mask and the polygon pre-annotation all agree (it aborted the run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from drywall_core.field.label_queue import QueueItem, annotation_for, rasterise, write_dry_run


def _sideways_photo(path: Path) -> Path:
    """Stored 192 wide x 96 high, displayed 96 wide x 192 high (orientation 6: rotate 90 clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((96, 192, 3), 120, np.uint8)).save(path, exif=exif.tobytes(), quality=95)
    return path


def test_an_exif_rotated_photo_is_queued_upright(tmp_path: Path) -> None:
    photo = _sideways_photo(tmp_path / "IMG_0001.jpg")
    mask = np.zeros((192, 96), np.uint8)  # the displayed orientation, as predict-field writes it
    mask[40:150, 30:50] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    item = QueueItem(photo, "IMG_0001.jpg", "a" * 64, tmp_path / "mask.png", "segment crack", 0.4, 0.5, "v1")

    coco = annotation_for(item, "crack")
    assert (coco["images"][0]["width"], coco["images"][0]["height"]) == (96, 192)
    polygons = [p for a in coco["annotations"] for p in a["segmentation"]]
    drawn = rasterise(polygons, 192, 96)
    assert (drawn & (mask > 0)).sum() / ((drawn | (mask > 0)).sum()) > 0.95, "polygons cover the mask"

    report = write_dry_run([item], "crack", "b1", tmp_path / "dry")
    (entry,) = report.queued
    with Image.open(tmp_path / "dry" / "images" / entry["file"]) as sent:
        assert sent.size == (96, 192), "the photo that goes to Roboflow is upright, like its annotation"
        assert sent.getexif().get(0x0112, 1) == 1, "and carries no orientation that would turn it again"
    saved = json.loads((tmp_path / "dry" / "annotations" / f"{'a' * 16}.json").read_text())
    assert saved["images"][0]["width"] == 96
