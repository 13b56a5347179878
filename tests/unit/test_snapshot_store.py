"""Dataset snapshots in the artifact store, and the training stage handing off through it.

Two hosts are two ``DRYWALL_HOME`` folders that share only the store: what one ingests or trains,
the other fetches by reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from drywall_core.base.config import Settings, TrainConfig
from drywall_core.base.errors import CheckFailed, InputError
from drywall_core.base.fsutil import sha256_file
from drywall_core.base.storage import IntegrityError, LocalStore, NotFound
from drywall_core.data.snapshots import fetch_snapshot, load_snapshots, parse_ref, read_manifest, snapshot_key
from drywall_core.model.load import decoder_state, load_model
from drywall_core.release.candidates import fetch_candidate, staging_key, train_candidate
from drywall_core.stages.context import Context
from drywall_core.stages.data import ingest as stage_ingest
from tests.conftest import edit_coco


def _settings(home: Path) -> Settings:
    return Settings(home=home, mask_workers=1)


def test_ingest_stores_a_snapshot_that_another_host_fetches(synthetic_cracks: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    host_a = _settings(tmp_path / "a")
    record = stage_ingest(Context(host_a, artifacts=store), synthetic_cracks, "cracks")
    name, sid = parse_ref(record["ref"])
    assert name == "cracks" and record["uploaded_files"] > 0
    manifest = read_manifest(store, record["ref"])
    assert manifest["validation"]["success"] is True and manifest["spec"]["prompt"] == "segment crack"
    sides = [e["side"] for e in manifest["images"]]
    assert sides.count("train") == record["counts"]["train_images"] and sides.count("val") > 0
    assert not (synthetic_cracks / "split.json").exists(), "nothing is written into the export"

    again = stage_ingest(Context(host_a, artifacts=store), synthetic_cracks, "cracks")
    assert again["ref"] == record["ref"] and again["uploaded_files"] == 0, "content-addressed: nothing re-uploaded"

    host_b = tmp_path / "b"
    samples, spec, stats = fetch_snapshot(store, record["ref"], host_b)
    distinct = {s.image for s in samples} | {s.mask for s in samples}  # identical masks are one blob
    assert spec.name == "cracks" and stats == {"fetched": len(distinct), "local": 0}
    assert all(s.image.is_relative_to(host_b) and s.mask.is_relative_to(host_b) for s in samples)
    by_file = {e["sha256"]: e for e in manifest["images"]}
    for s in samples:  # every file is the one the manifest names, with the side it assigned
        assert sha256_file(s.image) == s.sha256 and by_file[s.sha256]["side"] == s.side
        assert sha256_file(s.mask) == by_file[s.sha256]["mask_sha256"]
    assert fetch_snapshot(store, record["ref"], host_b)[2]["fetched"] == 0, "a host fetches only what it lacks"
    val, _, stats = fetch_snapshot(store, record["ref"], tmp_path / "c", sides=("val",))
    assert {s.side for s in val} == {"val"} and stats["fetched"] == len({s.image for s in val} | {s.mask for s in val})


def test_a_changed_annotation_is_a_new_snapshot(synthetic_cracks: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    first = stage_ingest(Context(_settings(tmp_path / "a"), artifacts=store), synthetic_cracks, "cracks")

    def shrink_one(coco: dict) -> None:
        ann = coco["annotations"][0]
        ann["segmentation"] = [[round(v * 0.9, 2) for v in ring] for ring in ann["segmentation"]]

    edit_coco(synthetic_cracks, "train", shrink_one)
    second = stage_ingest(Context(_settings(tmp_path / "a"), artifacts=store), synthetic_cracks, "cracks")
    assert second["snapshot"] != first["snapshot"]
    assert second["uploaded_files"] < 2 * sum(second["counts"][k] for k in ("train_images", "val_images"))


def test_failed_validation_stores_nothing(synthetic_cracks: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")

    def negative(coco: dict) -> None:
        coco["annotations"][0]["bbox"][2] = -4

    edit_coco(synthetic_cracks, "train", negative)
    with pytest.raises(CheckFailed, match="validation failed"):
        stage_ingest(Context(_settings(tmp_path / "a"), artifacts=store), synthetic_cracks, "cracks")
    assert store.list("datasets") == []


def test_tampered_store_content_is_refused(synthetic_cracks: Path, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    ref = stage_ingest(Context(_settings(tmp_path / "a"), artifacts=store), synthetic_cracks, "cracks")["ref"]
    manifest = read_manifest(store, ref)
    blob = next(k for k in store.list(snapshot_key(ref, "images/")))
    (store.root / blob).write_bytes(b"not the image")
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        fetch_snapshot(store, ref, tmp_path / "b")
    manifest["images"][0]["side"] = "val" if manifest["images"][0]["side"] == "train" else "train"
    (store.root / snapshot_key(ref)).write_text(json.dumps(manifest))
    with pytest.raises(CheckFailed, match="does not match snapshot id"):
        read_manifest(store, ref)
    with pytest.raises(InputError, match="snapshot reference"):
        parse_ref("cracks")
    with pytest.raises(NotFound):
        read_manifest(store, "cracks/" + "0" * 64)


@pytest.fixture
def snapshot_refs(synthetic_exports: list[Path], tmp_path: Path) -> tuple[LocalStore, list[str]]:
    store = LocalStore(tmp_path / "store")
    host = _settings(tmp_path / "ingest-host")
    refs = [
        stage_ingest(Context(host, artifacts=store), e, n)["ref"]
        for e, n in zip(synthetic_exports, ("cracks", "drywall-join"), strict=True)
    ]
    return store, refs


CFG = TrainConfig(epochs=4, lr=1e-2, batch_size=8, patience=10)


def _train_on(host: Path, store: LocalStore, refs: list[str], model: Path, staging: str, **kw) -> dict:
    return train_candidate(
        store, refs, load_model(model), CFG, staging, host / "work", host, host / "cache", progress=False, **kw
    )


def test_training_stages_its_candidate_and_resumes_on_another_host(
    snapshot_refs: tuple[LocalStore, list[str]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    store, refs = snapshot_refs

    class Killed(Exception):
        pass

    def die_after_two(row: dict) -> None:
        if row["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):  # host A is lost after its second epoch
        _train_on(tmp_path / "host-a", store, refs, tiny_model_dir, "run-1", on_epoch_end=die_after_two)
    assert store.exists(staging_key("run-1", "checkpoint.pt")) and not store.exists(
        staging_key("run-1", "candidate.json")
    )

    epochs_b: list[int] = []
    resumed = _train_on(
        tmp_path / "host-b", store, refs, tiny_model_dir, "run-1", on_epoch_end=lambda r: epochs_b.append(r["epoch"])
    )
    assert resumed["resumed"] and epochs_b == [3, 4], "host B ran only the epochs host A had not finished"
    assert resumed["summary"]["cache"]["encoded"] == 0, "host B downloaded host A's activations"
    assert resumed["summary"]["cache"]["downloaded"] > 0
    assert not (tmp_path / "host-b" / "cache").is_relative_to(tmp_path / "host-a")

    whole = _train_on(tmp_path / "host-c", store, refs, tiny_model_dir, "run-2")
    assert not whole["resumed"] and whole["summary"]["best_epoch"] == resumed["summary"]["best_epoch"]

    got_b = fetch_candidate(store, "run-1", tmp_path / "orchestrator" / "b")
    got_c = fetch_candidate(store, "run-2", tmp_path / "orchestrator" / "c")
    weights_b = decoder_state(load_model(Path(got_b["artifact"])).model)
    weights_c = decoder_state(load_model(Path(got_c["artifact"])).model)
    assert weights_b.keys() == weights_c.keys()
    assert all(torch.equal(weights_b[k], weights_c[k]) for k in weights_b), "resumed run == uninterrupted run"
    assert json.loads(Path(got_b["metrics"]).read_text())["overall"] == got_b["overall"]
    samples, _ = load_snapshots(store, refs, tmp_path / "orchestrator")
    assert got_b["summary"]["train_images"] == sum(s.side == "train" for s in samples)


def test_ingest_command_prints_the_reference(cli, synthetic_cracks: Path, tmp_path: Path) -> None:
    r = cli("ingest", synthetic_cracks, "--dataset", "cracks", "--report", tmp_path / "report.json")
    assert r.code == 0, r.err
    ref = r.out.strip().splitlines()[-1].split()[1].rstrip(":")
    store = LocalStore(tmp_path / "home" / "registry")
    assert read_manifest(store, ref)["dataset"] == "cracks" and (tmp_path / "report.json").is_file()
    again = cli("ingest", synthetic_cracks, "--dataset", "cracks")
    assert again.code == 0 and f"snapshot {ref}:" in again.out and "0 files uploaded" in again.out
