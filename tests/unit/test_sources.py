"""Synthetic and local-folder sources, lineage, and the dataset registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drywall_core.base.errors import InputError
from drywall_core.data.datasets import load_registry
from drywall_core.data.exports import LINEAGE_FILE, open_export, sha256_file
from drywall_core.data.sources import copy_local_export, generate_synthetic


def test_synthetic_is_seeded(tmp_path: Path) -> None:
    a = generate_synthetic(tmp_path / "a", seed=7, n_sources=6)
    b = generate_synthetic(tmp_path / "b", seed=7, n_sources=6)
    c = generate_synthetic(tmp_path / "c", seed=8, n_sources=6)
    for task in ("cracks", "drywall-join"):
        ja = (a[task] / "train" / "_annotations.coco.json").read_bytes()
        assert ja == (b[task] / "train" / "_annotations.coco.json").read_bytes()
        assert ja != (c[task] / "train" / "_annotations.coco.json").read_bytes()


def test_synthetic_has_both_tasks_in_roboflow_layout(synthetic_root: Path) -> None:
    cracks = open_export(synthetic_root / "synthetic-cracks.v1i.coco")
    joins = open_export(synthetic_root / "synthetic-drywall-join.v1i.coco")
    assert set(cracks.splits) == {"train", "valid"}
    crack_anns = [a for s in cracks.splits.values() for a in s.annotations]
    join_anns = [a for s in joins.splits.values() for a in s.annotations]
    assert crack_anns and all(a["segmentation"] for a in crack_anns), "cracks are polygons"
    assert join_anns and all(a["segmentation"] == [] for a in join_anns), "taping strips are boxes"
    names = [i["file_name"] for s in cracks.splits.values() for i in s.images]
    assert all(".rf." in n for n in names)
    assert {c["id"] for c in cracks.splits["train"].categories} == {0, 1}


def test_synthetic_refuses_to_clobber(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "s", n_sources=3)
    with pytest.raises(InputError, match="not empty"):
        generate_synthetic(tmp_path / "s", n_sources=3)
    generate_synthetic(tmp_path / "s", n_sources=3, overwrite=True)


def test_local_copy_records_lineage(cracks_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    lineage = copy_local_export(cracks_export, out)
    stored = json.loads((out / LINEAGE_FILE).read_text())
    assert stored["source"] == "local"
    assert stored["annotation_sha256"]["valid"] == sha256_file(cracks_export / "valid" / "_annotations.coco.json")
    assert lineage["images"] == {"test": 4, "valid": 120}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp folders left"


def test_local_copy_of_broken_export_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "src" / "train"
    src.mkdir(parents=True)
    (src / "_annotations.coco.json").write_text("{not json")
    with pytest.raises(InputError, match="corrupt JSON"):
        copy_local_export(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_registry_defaults() -> None:
    reg = load_registry()
    assert reg.get("cracks").prompt == "segment crack"
    assert reg.get("cracks").label_strength == "strong"
    assert reg.get("drywall-join").prompt == "segment taping area"
    assert reg.get("drywall-join").label_strength == "weak"
    for spec in reg.datasets.values():
        assert len(set(spec.synonyms)) >= 5
        assert spec.prompts[0] == spec.prompt
    assert reg.get("cracks").expects_category("NewCracks - v2 2024-05-18 10-54pm")
    assert reg.get("drywall-join").expects_category("drywall-join")


def test_third_dataset_is_a_config_entry(cli, synthetic_cracks: Path, tmp_path: Path, monkeypatch) -> None:
    """A new dataset needs a YAML entry, not code: here 'screw-pops' reuses a polygon export."""
    reg_file = tmp_path / "datasets.yaml"
    reg_file.write_text(
        "datasets:\n"
        "  screw-pops:\n"
        "    prompt: segment screw pop\n"
        "    synonyms: [segment screw pop, find popped screws, segment nail pop, highlight screw heads,\n"
        "               segment fastener pop]\n"
        "    label_strength: strong\n"
        "    categories: 'screw|crack'\n"
        "    projects: [screw-pops]\n"
    )
    monkeypatch.setenv("DRYWALL_DATASETS_FILE", str(reg_file))
    r = cli("datasets")
    assert r.code == 0 and "screw-pops: 'segment screw pop' (strong)" in r.out
    r = cli("validate", synthetic_cracks, "--dataset", "screw-pops")
    assert r.code == 0, r.err
    assert "dataset 'screw-pops'" in r.out


def test_bad_registry_is_a_clear_error(cli, synthetic_cracks: Path, tmp_path: Path, monkeypatch) -> None:
    reg_file = tmp_path / "datasets.yaml"
    reg_file.write_text("datasets:\n  x:\n    prompt: p\n    synonyms: [a]\n    label_strength: medium\n")
    monkeypatch.setenv("DRYWALL_DATASETS_FILE", str(reg_file))
    r = cli("validate", synthetic_cracks)
    assert r.code == 2 and str(reg_file) in r.err and "invalid dataset registry" in r.err


def test_settings_from_environment(monkeypatch) -> None:
    from drywall_core.base.config import Settings

    monkeypatch.setenv("DRYWALL_MASK_WORKERS", "3")
    monkeypatch.setenv("DRYWALL_ROBOFLOW_API_KEY", "k-from-drywall")
    monkeypatch.setenv("ROBOFLOW_API_KEY", "k-plain")
    s = Settings()
    assert s.mask_workers == 3
    assert s.roboflow_key() == "k-from-drywall"
    assert "k-from-drywall" not in repr(s), "the key is a secret"
    monkeypatch.delenv("DRYWALL_ROBOFLOW_API_KEY")
    assert Settings().roboflow_key() == "k-plain"
