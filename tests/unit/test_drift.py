"""`drywall drift` on the real photos, and unreadable files skipped with their reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from drywall_core.field.drift import IMAGE_FEATURES, extract_features, find_images, image_features


def test_no_drift_between_drywall_train_and_valid(cli, drywall_export: Path, tmp_path: Path) -> None:
    r = cli("drift", "--reference", drywall_export / "train", "--current", drywall_export / "valid", "--out", tmp_path)
    assert r.code == 0, r.out + r.err
    body = json.loads((tmp_path / "drift.json").read_text())
    assert body["drift_detected"] is False
    assert body["n_reference"] == 820 and body["n_current"] == 100 and body["skipped"] == []
    assert 0 <= body["drifted_share"] < 0.5
    assert (tmp_path / "drift.html").stat().st_size > 10_000


def test_drift_between_drywall_and_cracks(cli, drywall_export: Path, cracks_export: Path, tmp_path: Path) -> None:
    r = cli("drift", "--reference", drywall_export / "train", "--current", cracks_export, "--out", tmp_path)
    assert r.code == 1, "drift detected is a failed check"
    body = json.loads((tmp_path / "drift.json").read_text())
    assert body["drift_detected"] is True and body["drifted_share"] >= 0.5
    assert body["n_current"] == 124
    assert "brightness_mean" in body["columns"]
    assert "drift DETECTED" in r.out


def test_unreadable_files_are_skipped_with_reasons(cli, drywall_export: Path, tmp_path: Path, monkeypatch) -> None:
    current = tmp_path / "current" / "nested"
    current.mkdir(parents=True)
    good = sorted((drywall_export / "valid").glob("*.jpg"))[:12]
    for p in good:
        shutil.copy(p, current / p.name)
    (current / "empty.jpg").write_bytes(b"")
    (current / "truncated.jpg").write_bytes(good[0].read_bytes()[:2000])
    (current / "notes.png").write_text("this is not a png")
    Image.fromarray(np.zeros((2100, 2100, 3), np.uint8)).save(current / "huge.png")
    (current / "readme.txt").write_text("ignored: not an image extension")
    monkeypatch.setenv("DRYWALL_MAX_IMAGE_PIXELS", "4000000")
    out = tmp_path / "out"
    r = cli("drift", "--reference", drywall_export / "train", "--current", tmp_path / "current", "--out", out)
    body = json.loads((out / "drift.json").read_text())
    assert r.code == (1 if body["drift_detected"] else 0), "the exit code tells the finding"
    reasons = {Path(s["path"]).name: s["reason"] for s in body["skipped"]}
    assert set(reasons) == {"empty.jpg", "truncated.jpg", "notes.png", "huge.png"}
    assert "0 bytes" in reasons["empty.jpg"]
    assert "not a readable image" in reasons["truncated.jpg"] and "not a readable image" in reasons["notes.png"]
    assert "over the 4000000-pixel limit" in reasons["huge.png"]
    assert body["n_current"] == 12
    for name in reasons:
        assert f"{name}: skipped" in r.err


def test_features_are_sane(drywall_export: Path) -> None:
    path = sorted((drywall_export / "valid").glob("*.jpg"))[0]
    f = image_features(path)
    assert set(f) == set(IMAGE_FEATURES)
    assert f["width"] == 640 and f["aspect_ratio"] == 1.0
    assert 0 < f["brightness_mean"] < 1 and f["sharpness_laplacian_var"] > 0
    table = extract_features(find_images(drywall_export / "valid")[:8], workers=2, progress=False)
    serial = extract_features(find_images(drywall_export / "valid")[:8], workers=1, progress=False)
    assert table.frame.equals(serial.frame)


def test_missing_folder_is_usage_error(cli, tmp_path: Path) -> None:
    r = cli("drift", "--reference", tmp_path / "nope", "--current", tmp_path, "--out", tmp_path / "o")
    assert r.code == 2 and "image folder not found" in r.err


def test_model_signals(cli, drywall_export: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    ref, cur = tmp_path / "ref", tmp_path / "cur"
    ref.mkdir()
    cur.mkdir()
    imgs = sorted((drywall_export / "valid").glob("*.jpg"))
    for p in imgs[:10]:
        shutil.copy(p, ref / p.name)
    for p in imgs[10:20]:
        shutil.copy(p, cur / p.name)
    r = cli(
        "drift",
        "--reference",
        ref,
        "--current",
        cur,
        "--out",
        tmp_path / "o",
        "--model",
        tiny_model_dir,
        "--prompt",
        "segment crack",
        "--prompt",
        "segment taping area",
    )
    body = json.loads((tmp_path / "o" / "drift.json").read_text())
    assert r.code == (1 if body["drift_detected"] else 0), r.err
    cols = body["columns"]
    assert {"fg_fraction__segment_crack", "confidence__segment_crack", "fg_fraction__segment_taping_area"} <= set(cols)


def test_parquet_reference_profile_gives_the_folder_result(cli, drywall_export: Path, tmp_path: Path) -> None:
    """A model version's reference_profile.parquet stands in for its training images."""
    from drywall_core.field.drift import write_reference_profile

    train = find_images(drywall_export / "train")[:200]
    folder = tmp_path / "ref"
    folder.mkdir()
    for p in train:
        shutil.copy(p, folder / p.name)
    profile = tmp_path / "reference_profile.parquet"
    assert write_reference_profile(train, profile) == 200
    by_profile = cli("drift", "--reference", profile, "--current", drywall_export / "valid", "--out", tmp_path / "a")
    by_folder = cli("drift", "--reference", folder, "--current", drywall_export / "valid", "--out", tmp_path / "b")
    a = json.loads((tmp_path / "a" / "drift.json").read_text())
    b = json.loads((tmp_path / "b" / "drift.json").read_text())
    assert by_profile.code == by_folder.code, by_profile.err + by_folder.err
    assert a["n_reference"] == b["n_reference"] == 200 and a["n_current"] == 100
    assert a["drifted_columns"] == b["drifted_columns"] and a["drifted_share"] == b["drifted_share"]


def test_embedding_drift_on_real_photos(cli, drywall_export, cracks_export, tiny_model_dir, tmp_path, monkeypatch):
    """The reference profile carries the training photos' image embeddings; drift compares the field
    photos' embeddings with Evidently's embeddings drift, names the test and its score, and the
    setting says which test decides. Each photo is embedded once: a second run reads the store."""
    from drywall_core.base.config import get_settings
    from drywall_core.field.drift import write_reference_profile
    from drywall_core.field.embedding_drift import embedding_columns
    from drywall_core.model.load import load_model

    profile = tmp_path / "reference_profile.parquet"
    train = find_images(drywall_export / "train")[:40]
    prompts = ["segment crack", "segment taping area"]
    write_reference_profile(
        train, profile, model=load_model(tiny_model_dir), prompts=prompts, embedding_precision="int8"
    )
    import pandas as pd

    frame = pd.read_parquet(profile)
    hidden = load_model(tiny_model_dir).model.config.vision_config.hidden_size
    assert len(embedding_columns(frame)) == hidden and len(frame) == 40  # one column per dimension
    cracks = tmp_path / "cracks"
    cracks.mkdir()
    for p in find_images(cracks_export)[:30]:
        shutil.copy(p, cracks / p.name)

    monkeypatch.setenv("DRYWALL_DRIFT_DECIDER", "embeddings")
    args = ("--reference", profile, "--model", tiny_model_dir, "--current", cracks)
    r = cli("drift", *args, "--out", tmp_path / "a")
    body = json.loads((tmp_path / "a" / "drift.json").read_text())
    emb = body["embeddings"]
    assert emb["method"] == "pca-ks" and emb["drift_detected"] is True and emb["score"] > 0, emb
    assert (emb["n_reference"], emb["n_current"]) == (40, 30) and body["embeddings_compared"] == "on"
    assert body["drift_detected"] is True and body["decided_by"] == "embeddings (pca-ks)" and r.code == 1
    assert "Drift in embeddings" in (tmp_path / "a" / "drift.html").read_text()
    assert not any(c.startswith("emb_") for c in body["columns"]), "the embeddings are one test, not a column each"

    store = get_settings().embeddings_root
    stored = {p: p.stat().st_mtime_ns for p in store.rglob("*.npy")}
    assert len(stored) == 30  # the current photos (the reference's came with the profile)
    monkeypatch.setenv("DRYWALL_DRIFT_DECIDER", "features")
    monkeypatch.setenv("DRYWALL_DRIFT_EMBEDDING_TEST", "classifier")
    r = cli("drift", *args, "--out", tmp_path / "b")
    again = json.loads((tmp_path / "b" / "drift.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*.npy")} == stored, "no photo embedded twice"
    assert again["embeddings"]["method"] == "classifier" and again["decided_by"] == "image statistics"
    assert again["drift_detected"] is again["features_drift_detected"]

    plain = tmp_path / "plain.parquet"  # a profile from before embeddings: the statistics decide, and say why
    write_reference_profile(train, plain)
    monkeypatch.setenv("DRYWALL_DRIFT_DECIDER", "either")
    r = cli("drift", "--reference", plain, "--model", tiny_model_dir, "--current", cracks, "--out", tmp_path / "c")
    old = json.loads((tmp_path / "c" / "drift.json").read_text())
    assert old["embeddings"] is None and old["embeddings_compared"].startswith("not compared")
    assert old["decided_by"] == "image statistics (no embeddings on both sides)"
    assert "image statistics decide" in r.err
