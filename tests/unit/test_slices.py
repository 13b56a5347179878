"""Slices of field photos: site from the name, camera and week from EXIF, drift per slice."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from drywall_core.base.config import Settings, SliceConfig
from drywall_core.data.slice_keys import UNKNOWN, SliceKeys, exif_keys, label, site_of, slice_keys, week_of

PATTERN = SliceConfig().site_regex


def _photo(path: Path, make: str | None = None, model: str | None = None, taken: str | None = None) -> Path:
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), (120, 110, 100)).save(path, exif=exif)
    return path


def test_camera_and_week_come_from_exif(tmp_path: Path) -> None:
    canon = _photo(tmp_path / "a.jpg", "Canon", "Canon EOS R5", "2026:11:24 10:00:00")
    assert exif_keys(canon) == ("Canon EOS R5", "2026-W48"), "a model that names its make is not doubled"
    apple = _photo(tmp_path / "b.jpg", "Apple", "iPhone 15", "2027:01:01 08:00:00")
    assert exif_keys(apple) == ("Apple iPhone 15", "2026-W53"), "ISO week of a new year's day"
    assert exif_keys(_photo(tmp_path / "c.jpg")) == (UNKNOWN, UNKNOWN)
    (tmp_path / "d.jpg").write_bytes(b"not a photo")
    assert exif_keys(tmp_path / "d.jpg") == (UNKNOWN, UNKNOWN)
    assert week_of("0000:00:00 00:00:00") == UNKNOWN and week_of(None) == UNKNOWN


def test_site_comes_from_the_key_and_every_value_is_a_safe_label(tmp_path: Path) -> None:
    assert site_of("field-images/sites/tower-b/2026/x.jpg", PATTERN) == "tower-b"
    assert site_of("sites/north/x.jpg", PATTERN) == "north"
    assert site_of("field-images/x.jpg", PATTERN) == UNKNOWN
    assert site_of("sites/../x.jpg", PATTERN) == UNKNOWN, "a traversal name is no site"
    assert site_of("sites/<script>alert(1)<%2Fscript>/x.jpg", PATTERN) == "script_alert_1_2Fscript"
    assert len(site_of(f"sites/{'s' * 500}/x.jpg", PATTERN)) == 64
    hostile = _photo(tmp_path / "e.jpg", "Evil\x00|Corp\n", "../../etc/passwd")
    camera, _ = exif_keys(hostile)
    assert re.fullmatch(r"[A-Za-z0-9._ -]+", camera) and "/" not in camera, camera
    assert label("") == UNKNOWN and label("   ") == UNKNOWN
    keys = slice_keys(_photo(tmp_path / "sites" / "x" / "f.jpg", "Sony", "ILCE-7M4"), "sites/x/f.jpg", PATTERN)
    assert (keys.site, keys.camera, keys.week) == ("x", "Sony ILCE-7M4", UNKNOWN)


def test_a_site_pattern_without_a_site_group_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRYWALL_SLICES__SITE_PATTERN", r"sites/([^/]+)/")
    with pytest.raises(ValueError, match=r"(?s)site_pattern.*\(\?P<site>"):
        Settings()
    monkeypatch.setenv("DRYWALL_SLICES__SITE_PATTERN", r"sites/(?P<site>[^/]+")
    with pytest.raises(ValueError, match="not a regular expression"):
        Settings()


def _copy(photos: list[Path], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for p in photos:
        shutil.copyfile(p, dest / p.name)


def test_drift_per_site_on_real_photos(cli, cracks_export: Path, drywall_export: Path, tmp_path: Path) -> None:
    """Two sites of 25 photos and one of 3: the site whose photos are of the other export drifts,
    the one like the reference does not, the small one says it was too small to test."""
    cracks = sorted((cracks_export / "valid").glob("*.jpg"))
    walls = sorted((drywall_export / "valid").glob("*.jpg"))
    _copy(cracks[:40], tmp_path / "reference")
    _copy(cracks[40:65], tmp_path / "current" / "sites" / "alpha")
    _copy(walls[:25], tmp_path / "current" / "sites" / "bravo")
    _copy(cracks[65:68], tmp_path / "current" / "sites" / "charlie")
    out = tmp_path / "out"
    r = cli("drift", "--reference", tmp_path / "reference", "--current", tmp_path / "current", "--out", out)
    assert r.code == 1, r.err  # the whole set drifts: a third of it is another export
    body = json.loads((out / "drift.json").read_text())
    sites = {s["value"]: s for s in body["slices"] if s["key"] == "site"}
    assert set(sites) == {"alpha", "bravo", "charlie"}
    assert sites["bravo"]["tested"] and sites["bravo"]["drift_detected"] and sites["bravo"]["drifted_columns"]
    assert sites["alpha"]["tested"] and not sites["alpha"]["drift_detected"], sites["alpha"]
    assert not sites["charlie"]["tested"] and sites["charlie"]["drift_detected"] is None
    assert sites["charlie"]["note"] == "too few photos to test (3 < 20)"
    assert {s["n_current"] for s in sites.values()} == {25, 3}
    cameras = [s for s in body["slices"] if s["key"] == "camera"]
    assert [(c["value"], c["n_current"]) for c in cameras] == [("unknown", 53)], "Roboflow strips EXIF"
    assert cameras[0]["note"] == "every photo: the run's verdict" and not cameras[0]["tested"]
    assert "drift in slices: site=bravo" in r.err


def test_dataset_images_carry_the_slice_keys_their_dataset_gives(tmp_path: Path) -> None:
    from drywall_core.data.slice_keys import dataset_keys

    photo = _photo(tmp_path / "p.jpg", "Canon", "Canon EOS R5", "2026:11:24 10:00:00")
    assert dataset_keys({"extra": {"site": "tower-b"}}, photo, PATTERN) == SliceKeys(
        "tower-b", "Canon EOS R5", "2026-W48"
    )
    tags = {"extra": {"user_tags": ["site:north", "camera:Drone 7", "week:2026-W02", "defect"]}}
    assert dataset_keys(tags, photo, PATTERN) == SliceKeys("north", "Drone 7", "2026-W02")
    assert dataset_keys({"extra": {"user_tags": ["week:not-a-week"]}}, photo, PATTERN).week == "2026-W48"
    upload = {"file_name": "x_jpg.rf.1.jpg", "extra": {"name": "sites/east/x.jpg"}}
    assert dataset_keys(upload, photo, PATTERN).site == "east", "the upload name holds the site"
    assert dataset_keys({"extra": "junk"}, tmp_path / "missing.jpg", PATTERN) == SliceKeys()


def _tag_sites(synthetic_cracks: Path) -> None:
    from tests.conftest import edit_coco

    def tag(coco: dict) -> None:
        for i, im in enumerate(coco["images"]):
            im["extra"] = {"name": im["file_name"], "user_tags": [f"site:{'north' if i % 2 else 'south'}"]}

    for split in ("train", "valid"):
        edit_coco(synthetic_cracks, split, tag)


def test_evaluation_reports_metrics_per_site(cli, synthetic_cracks: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    _tag_sites(synthetic_cracks)
    out = tmp_path / "eval"
    r = cli("evaluate", "--model", tiny_model_dir, "--export", synthetic_cracks, "--out", out)
    assert r.code == 0, r.err
    m = json.loads((out / "metrics.json").read_text())
    crack = m["datasets"]["cracks"]
    sites = crack["slices"]["site"]
    assert set(sites) == {"north", "south"} and "camera" not in crack["slices"], "only the keys the dataset has"
    assert sum(v["images"] for v in sites.values()) == crack["images"]
    for site, v in sites.items():
        ious = [p["iou"] for p in m["per_image"] if p["slices"]["site"] == site]
        assert v["miou"] == pytest.approx(sum(ious) / len(ious))
    assert "| segment crack | site=north |" in r.out


def test_a_snapshot_keeps_the_slice_keys_and_an_unsliced_one_is_unchanged(
    synthetic_cracks: Path, synthetic_exports: list[Path], tmp_path: Path
) -> None:
    from drywall_core.base.storage import LocalStore
    from drywall_core.data.datasets import load_registry
    from drywall_core.data.exports import open_export
    from drywall_core.data.masks import render_masks
    from drywall_core.data.snapshots import build_manifest, fetch_snapshot, publish_snapshot
    from drywall_core.data.splits import split_by_source

    spec = load_registry().get("cracks")
    plain = open_export(synthetic_exports[0])
    render_masks(plain, tmp_path / "plain-masks", progress=False)
    manifest, _ = build_manifest(plain, spec, tmp_path / "plain-masks", split_by_source(plain))
    assert not any("slices" in e for e in manifest["images"]), "no slice metadata: the manifest is as before"

    _tag_sites(synthetic_cracks)
    export = open_export(synthetic_cracks)
    render_masks(export, tmp_path / "masks", progress=False)
    manifest, files = build_manifest(export, spec, tmp_path / "masks", split_by_source(export))
    store = LocalStore(tmp_path / "store")
    record = publish_snapshot(store, manifest, files)
    samples, _, _ = fetch_snapshot(store, record["ref"], tmp_path / "home")
    assert {s.slices.site for s in samples} == {"north", "south"}
    assert all(s.slices.camera == UNKNOWN for s in samples)


def test_field_predictions_carry_the_slice_keys_and_summarise_per_slice(
    tiny_model_dir: Path, cracks_export: Path, tmp_path: Path
) -> None:
    from drywall_core.field import predictions as fp
    from drywall_core.field.drift import IMAGE_EXTENSIONS
    from drywall_core.field.slices import slice_signals
    from drywall_core.model.runtime import load_for_inference

    src = sorted((cracks_export / "valid").glob("*.jpg"))[:5]
    root = tmp_path / "field-images"
    for i, p in enumerate(src):
        dest = root / "sites" / ("north" if i < 3 else "south") / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = "Apple", "iPhone 15"
        exif.get_ifd(0x8769)[0x9003] = "2026:11:24 10:00:00"
        Image.open(p).save(dest, exif=exif) if i == 0 else shutil.copyfile(p, dest)
    photos = fp.field_images(root, IMAGE_EXTENSIONS)
    run = fp.predict_field(
        load_for_inference(tiny_model_dir), photos, ["segment crack"], tmp_path / "o", "v1", progress=False
    )
    by_image = run.frame.set_index("image")
    assert by_image.loc[f"sites/north/{src[0].name}", ["site", "camera", "week"]].tolist() == [
        "north",
        "Apple iPhone 15",
        "2026-W48",
    ]
    assert by_image.loc[f"sites/south/{src[4].name}", ["site", "camera", "week"]].tolist() == [
        "south",
        UNKNOWN,
        UNKNOWN,
    ]
    rows = {(r["key"], r["value"]): r for r in slice_signals(run.frame, min_photos=2)}
    assert rows[("site", "north")]["photos"] == 3 and rows[("site", "south")]["photos"] == 2
    north = run.frame[run.frame["site"] == "north"]
    assert rows[("site", "north")]["confidence segment crack"] == pytest.approx(
        north["mean_confidence"].mean(), abs=1e-4
    )
    assert rows[("camera", "Apple iPhone 15")]["note"] == "too few photos (1 < 2)"
