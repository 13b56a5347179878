"""Split by source photo: no leakage, deterministic, stable as data grows."""

from __future__ import annotations

import json
from pathlib import Path

from drywall_core.data.exports import open_export
from drywall_core.data.splits import source_of, split_by_source
from tests.conftest import edit_coco


def test_source_of() -> None:
    assert source_of("2000x1500_0_resized_jpg.rf.0dd5a8210e3178cb5374e1bd32333ff1.jpg") == "2000x1500_0_resized_jpg"
    assert source_of("plain.jpg") == "plain"


def test_real_drywall_train_no_source_leak(drywall_export: Path, tmp_path: Path) -> None:
    root = tmp_path / "train-only"
    (root / "train").mkdir(parents=True)
    (root / "train" / "_annotations.coco.json").symlink_to(drywall_export / "train" / "_annotations.coco.json")
    plan = split_by_source(open_export(root), seed=42, val_fraction=0.2)
    assert len(plan.train) + len(plan.val) == 820
    train_src, val_src = plan.sources("train"), plan.sources("val")
    assert len(train_src | val_src) >= 150  # ~160 source photos
    assert not train_src & val_src
    assert 0.1 <= len(plan.val) / 820 <= 0.3
    names = [i.file_name for i in plan.train + plan.val]
    assert len(names) == len(set(names))


def test_roboflow_split_leaks_but_ours_does_not(drywall_export: Path) -> None:
    export = open_export(drywall_export)
    rf = {n: {source_of(i["file_name"]) for i in s.images} for n, s in export.splits.items()}
    assert rf["train"] & rf["valid"], "the real export's own split shares source photos"
    plan = split_by_source(export)
    assert not plan.sources("train") & plan.sources("val")


def test_deterministic_and_seeded(synthetic_cracks: Path) -> None:
    a = split_by_source(open_export(synthetic_cracks), seed=1)
    b = split_by_source(open_export(synthetic_cracks), seed=1)
    c = split_by_source(open_export(synthetic_cracks), seed=2)
    assert a.to_json() == b.to_json()
    assert a.sources("val") != c.sources("val")


def test_stable_when_new_photos_arrive(synthetic_cracks: Path) -> None:
    before = split_by_source(open_export(synthetic_cracks), seed=3)

    def add(coco: dict) -> None:
        for k in range(30):
            img = {**coco["images"][0], "id": 10_000 + k, "file_name": f"new{k}_jpg.rf.{k:032x}.jpg"}
            coco["images"].append(img)

    edit_coco(synthetic_cracks, "train", add)
    after = split_by_source(open_export(synthetic_cracks), seed=3)
    assert before.sources("val") <= after.sources("val")
    assert before.sources("train") <= after.sources("train")


def test_cli_split(cli, synthetic_cracks: Path, tmp_path: Path) -> None:
    out = tmp_path / "split.json"
    r = cli("split", synthetic_cracks, "--out", out, "--seed", "5")
    assert r.code == 0, r.err
    body = json.loads(out.read_text())
    assert body["seed"] == 5 and body["counts"]["val_images"] > 0
    assert not {i["source"] for i in body["train"]} & {i["source"] for i in body["val"]}
