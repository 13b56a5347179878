"""Mask rendering: matches pycocotools' own rasterisation, {0,255} PNGs, incremental, atomic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drywall_core.data import masks as masks_mod
from drywall_core.data.exports import open_export
from drywall_core.data.masks import MANIFEST, render_masks
from tests.conftest import edit_coco


def _reference_union(coco_path: Path) -> dict[str, np.ndarray]:
    """pycocotools' own rasterisation: one ``annToMask`` per annotation, OR-ed per image."""
    from pycocotools import mask as mu
    from pycocotools.coco import COCO

    coco = COCO(str(coco_path))
    out = {}
    for img_id, img in coco.imgs.items():
        m = np.zeros((img["height"], img["width"]), dtype=bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img_id])):
            if ann["segmentation"]:
                m |= coco.annToMask(ann).astype(bool)
            else:  # box-only: pycocotools' bbox conversion
                rle = mu.frPyObjects(np.asarray([ann["bbox"]], dtype=np.float64), img["height"], img["width"])
                m |= mu.decode(rle)[..., 0].astype(bool)
        out[Path(img["file_name"]).stem] = m
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_real_crack_masks_match_pycocotools(cracks_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "masks"
    stats = render_masks(open_export(cracks_export), out, workers=2, progress=False)
    assert stats.rendered == 124
    ref = _reference_union(cracks_export / "valid" / "_annotations.coco.json")
    ious = []
    for stem, want in ref.items():
        im = Image.open(out / "valid" / f"{stem}.png")
        assert im.mode == "L" and im.size == (want.shape[1], want.shape[0])
        arr = np.asarray(im)
        assert set(np.unique(arr)) <= {0, 255}
        ious.append(_iou(arr > 0, want))
    assert min(ious) >= 0.99, f"worst IoU {min(ious):.4f}"
    assert np.mean([r.any() for r in ref.values()]) > 0.9, "masks are not trivially empty"


def test_bbox_only_annotation_fills_its_box(drywall_export: Path, tmp_path: Path) -> None:
    coco = json.loads((drywall_export / "valid" / "_annotations.coco.json").read_text())
    per_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    ann = next(anns[0] for anns in per_image.values() if len(anns) == 1)  # alone on its image
    img = next(i for i in coco["images"] if i["id"] == ann["image_id"])
    render_masks(open_export(drywall_export), tmp_path, workers=2, progress=False)
    arr = np.asarray(Image.open(tmp_path / "valid" / f"{Path(img['file_name']).stem}.png")) > 0
    x, y, w, h = (int(v) for v in ann["bbox"])
    assert arr[y : y + h, x : x + w].all()
    box = np.zeros_like(arr)
    box[y : y + h, x : x + w] = True
    assert arr.sum() == box.sum(), "nothing outside the box"


def test_image_without_annotations_gets_empty_mask(synthetic_cracks: Path, tmp_path: Path) -> None:
    export = open_export(synthetic_cracks)
    render_masks(export, tmp_path, workers=1, progress=False)
    empty = [
        i for s in export.splits.values() for i in s.images if not any(a["image_id"] == i["id"] for a in s.annotations)
    ]
    assert empty
    split = next(n for n, s in export.splits.items() if empty[0] in s.images)
    arr = np.asarray(Image.open(tmp_path / split / f"{Path(empty[0]['file_name']).stem}.png"))
    assert arr.shape == (empty[0]["height"], empty[0]["width"]) and not arr.any()


def test_parallel_equals_serial(synthetic_cracks: Path, tmp_path: Path) -> None:
    export = open_export(synthetic_cracks)
    render_masks(export, tmp_path / "a", workers=1, progress=False)
    render_masks(export, tmp_path / "b", workers=2, chunk=4, progress=False)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert files
    for f in files:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / f)), np.asarray(Image.open(tmp_path / "b" / f)))


def test_incremental_rerender_only_changed(synthetic_cracks: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    first = render_masks(open_export(synthetic_cracks), out, workers=1, progress=False)
    assert first.rendered > 0 and first.skipped == 0
    again = render_masks(open_export(synthetic_cracks), out, workers=1, progress=False)
    assert again.rendered == 0 and again.skipped == first.rendered

    changed = {}

    def move(coco: dict) -> None:
        ann = next(a for a in coco["annotations"] if a["segmentation"])
        ann["segmentation"][0] = [v + 1.0 for v in ann["segmentation"][0]]
        changed["name"] = next(i["file_name"] for i in coco["images"] if i["id"] == ann["image_id"])

    edit_coco(synthetic_cracks, "train", move)
    before = (out / "train" / f"{Path(changed['name']).stem}.png").read_bytes()
    third = render_masks(open_export(synthetic_cracks), out, workers=1, progress=False)
    assert third.rendered == 1
    assert (out / "train" / f"{Path(changed['name']).stem}.png").read_bytes() != before

    def drop(coco: dict) -> None:
        gone = coco["images"].pop()
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != gone["id"]]
        changed["gone"] = gone["file_name"]

    edit_coco(synthetic_cracks, "train", drop)
    fourth = render_masks(open_export(synthetic_cracks), out, workers=1, progress=False)
    assert fourth.removed == 1 and fourth.rendered == 0
    assert not (out / "train" / f"{Path(changed['gone']).stem}.png").exists()


def test_deleted_output_is_rendered_again(synthetic_cracks: Path, tmp_path: Path) -> None:
    render_masks(open_export(synthetic_cracks), tmp_path, workers=1, progress=False)
    victim = next((tmp_path / "train").glob("*.png"))
    victim.unlink()
    stats = render_masks(open_export(synthetic_cracks), tmp_path, workers=1, progress=False)
    assert stats.rendered == 1 and victim.exists()


def test_failure_midway_leaves_no_partial_files(
    synthetic_cracks: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inject a crash on the 5th image: finished masks are kept and recorded, no temp files."""
    real = masks_mod.render
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(masks_mod, "render", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        render_masks(open_export(synthetic_cracks), tmp_path, workers=1, chunk=2, progress=False)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert len(manifest) == 4
    for rel in manifest:
        Image.open(tmp_path / rel).verify()
    monkeypatch.setattr(masks_mod, "render", real)
    resumed = render_masks(open_export(synthetic_cracks), tmp_path, workers=1, progress=False)
    assert resumed.skipped == 4


def test_cli_masks(cli, synthetic_cracks: Path, tmp_path: Path) -> None:
    r = cli("masks", synthetic_cracks, "--out", tmp_path / "o", "--workers", "2")
    assert r.code == 0, r.err
    assert "rendered" in r.out
    assert len(list((tmp_path / "o").rglob("*.png"))) == sum(
        len(s.images) for s in open_export(synthetic_cracks).splits.values()
    )


def test_two_renders_of_one_export_into_one_folder_both_succeed(synthetic_cracks, tmp_path) -> None:
    """Two ingests on one host share the masks folder: the second waits for the first (it used to
    delete the first's temporary files, and one of them failed with "cannot write here")."""
    import threading

    from drywall_core.data.exports import open_export
    from drywall_core.data.masks import render_masks

    export, out = open_export(synthetic_cracks), tmp_path / "masks"
    results, errors = [], []

    def run() -> None:
        try:
            results.append(render_masks(export, out, workers=2, chunk=4, progress=False))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(r.rendered for r in results)[0] == 0, "the second found the first's masks"
    assert not [p for p in out.rglob("*.tmp")]


def test_a_rerun_after_a_lost_manifest_renders_only_what_is_missing(synthetic_cracks, tmp_path) -> None:
    """A run that could not save its manifest (a full disk, a kill before the first save) used to make
    the rerun render everything: each mask carries the fingerprint of its inputs."""
    from drywall_core.data.exports import open_export
    from drywall_core.data.masks import MANIFEST, render_masks

    export, out = open_export(synthetic_cracks), tmp_path / "masks"
    first = render_masks(export, out, workers=1, progress=False)
    (out / MANIFEST).unlink()
    victim = sorted(out.rglob("*.png"))[0]
    victim.unlink()
    again = render_masks(export, out, workers=1, progress=False)
    assert again.rendered == 1 and again.skipped == first.rendered - 1, again
