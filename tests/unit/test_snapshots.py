"""Dataset snapshot ids: stable for the same content, different for any changed image, mask or side."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from drywall_core.data.snapshots import nothing_new, snapshot_ids, training_identity


def test_snapshot_id_follows_content_not_paths(synthetic_samples, tmp_path: Path) -> None:
    samples, _ = synthetic_samples
    ids = snapshot_ids(samples)
    assert set(ids) == {"cracks", "drywall-join"} and all(len(v) == 64 for v in ids.values())
    moved = []
    for s in samples:  # the same files somewhere else: the same snapshot
        img, mask = tmp_path / "i" / s.image.name, tmp_path / "m" / s.dataset / s.mask.name
        for src, dst in ((s.image, img), (s.mask, mask)):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
        moved.append(dataclasses.replace(s, image=img, mask=mask))
    assert snapshot_ids(moved) == ids
    flipped = [dataclasses.replace(moved[0], side="val" if moved[0].side == "train" else "train"), *moved[1:]]
    changed = snapshot_ids(flipped)
    assert changed[moved[0].dataset] != ids[moved[0].dataset], "a split side is part of the snapshot"
    other = next(d for d in ids if d != moved[0].dataset)
    assert changed[other] == ids[other], "other datasets keep their ids"
    moved[1].mask.write_bytes(moved[1].mask.read_bytes() + b"\0")
    assert snapshot_ids(moved)[moved[1].dataset] != ids[moved[1].dataset], "a changed mask is a new snapshot"


def test_nothing_new_compares_all_three() -> None:
    base = training_identity({"cracks": "a"}, "fp", {"lr": 1e-4})
    assert nothing_new(base, {"trained_from": base}) == []
    assert nothing_new(base, None) == ["no champion"]
    assert nothing_new(base, {"version": "v1"}) == ["the champion does not record what it was trained from"]
    assert nothing_new(training_identity({"cracks": "b"}, "fp", {"lr": 1e-4}), {"trained_from": base}) == [
        "snapshots differs"
    ]
    assert nothing_new(training_identity({"cracks": "a"}, "fp2", {"lr": 1e-3}), {"trained_from": base}) == [
        "base_fingerprint differs",
        "train_config differs",
    ]
