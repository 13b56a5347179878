"""Names from outside stay in their folders: S3 keys of field-image events, staged candidates, version
manifests, snapshot manifests and references. Each case wrote outside its root before the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drywall_core.base.errors import CheckFailed, InputError
from drywall_core.base.fsutil import check_relative, inside
from drywall_core.base.storage import IntegrityError, LocalStore, sha256_bytes
from drywall_core.data.snapshots import fetch_snapshot, parse_ref, snapshot_key
from drywall_core.data.webhooks import FieldImagesPolicy, SchemaError, parse_field_images
from drywall_core.release.candidates import fetch_candidate, staging_key
from drywall_core.release.registry import CorruptRecord, ModelRegistry
from drywall_core.stages.context import Context
from drywall_core.stages.data import ingest as stage_ingest

HOSTILE = [
    "/tmp/x/E.jpg",
    "../E.jpg",
    "field-images/../../E.jpg",
    "field-images/a\x00.jpg",
    "field-images/\x1b[31mred.jpg",
    "field-images/./a.jpg",
    "field-images//a.jpg",
    "field-images\\..\\a.jpg",
    ".",
    "/",
]
POLICY = FieldImagesPolicy(bucket="field", prefix="field-images/")


@pytest.mark.parametrize("key", HOSTILE)
def test_a_relative_name_is_plain_or_refused(key: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="S3 key"):
        inside(tmp_path, key, "S3 key")
    assert check_relative("field-images/site 7/img#1.jpg", "S3 key")


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "out").symlink_to(tmp_path)
    with pytest.raises(InputError, match="resolves outside"):
        inside(tmp_path / "root", "out/E.jpg", "S3 key")


@pytest.mark.parametrize("key", HOSTILE)
def test_the_receiver_refuses_a_hostile_key_by_name(key: str) -> None:
    body = json.dumps({"bucket": "field", "keys": ["field-images/ok.jpg", key]}).encode()
    with pytest.raises(SchemaError, match="S3 key"):
        parse_field_images(body, POLICY)


def test_the_receiver_decodes_notification_keys_before_checking_them() -> None:
    note = {"Records": [{"s3": {"bucket": {"name": "field"}, "object": {"key": "field-images%2F..%2F..%2FE.jpg"}}}]}
    with pytest.raises(SchemaError, match=r"'\.\.' path segment"):
        parse_field_images(json.dumps(note).encode(), POLICY)
    ok = {"Records": [{"s3": {"bucket": {"name": "field"}, "object": {"key": "field-images/site+7/a%231.jpg"}}}]}
    assert parse_field_images(json.dumps(ok).encode(), POLICY).keys == ["field-images/site 7/a#1.jpg"]


def test_the_receiver_takes_only_its_bucket_and_prefix() -> None:
    other_bucket = json.dumps({"bucket": "someone-else", "keys": ["field-images/a.jpg"]}).encode()
    with pytest.raises(SchemaError, match="'someone-else' is not the configured bucket 'field'"):
        parse_field_images(other_bucket, POLICY)
    outside = json.dumps({"bucket": "field", "keys": ["models/clipseg/aliases/champion.json"]}).encode()
    with pytest.raises(SchemaError, match="outside the field-images prefix"):
        parse_field_images(outside, POLICY)
    with pytest.raises(SchemaError, match="no S3 bucket is configured"):
        parse_field_images(outside, FieldImagesPolicy(bucket=None))


def test_field_image_fetch_refuses_a_key_that_leaves_its_folder(s3_server, tmp_path: Path, monkeypatch) -> None:
    """The flows' own check (drift-daily and predict-field share the fetch): nothing is fetched."""
    from drywall_core.base.config import get_settings
    from tasks.field import fetch_s3_images_task

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    s3_server.client().put_object(Bucket=s3_server.bucket, Key="field-images/ok.jpg", Body=b"jpeg")
    escape = tmp_path / "escape"
    evil = str(escape / "E.jpg")
    with pytest.raises(InputError, match="S3 key"):
        fetch_s3_images_task.fn(s3_server.bucket, ["field-images/ok.jpg", evil], None, str(tmp_path / "dest"))
    assert not escape.exists() and not (tmp_path / "dest" / "field-images" / "ok.jpg").exists()


def _staged(store: LocalStore, staging: str, files: dict[str, bytes], candidate: dict) -> None:
    for name, data in files.items():
        store.put_bytes(staging_key(staging, f"model/{name}"), data)
    store.put_bytes(staging_key(staging, "candidate.json"), json.dumps(candidate).encode())


def test_a_staged_candidate_names_only_its_own_files_with_checksums(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    evil = tmp_path / "evil.txt"
    _staged(store, "run1", {"x": b"attacker"}, {"model_files": [str(evil)], "model_sha256": {str(evil): "0" * 64}})
    with pytest.raises(InputError, match="model file"):
        fetch_candidate(store, "run1", tmp_path / "dest")
    assert not evil.exists()

    _staged(store, "run2", {"decoder.safetensors": b"weights"}, {"model_files": ["decoder.safetensors"]})
    with pytest.raises(CheckFailed, match="no sha256 for every model file"):
        fetch_candidate(store, "run2", tmp_path / "dest2")

    digest = {"decoder.safetensors": sha256_bytes(b"the weights that were trained")}
    _staged(store, "run3", {"decoder.safetensors": b"swapped"}, {"model_files": list(digest), "model_sha256": digest})
    with pytest.raises(IntegrityError):
        fetch_candidate(store, "run3", tmp_path / "dest3")
    assert not (tmp_path / "dest3" / "model" / "decoder.safetensors").exists()


def _version(store: LocalStore, reg: ModelRegistry, version: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        if not name.startswith("/"):
            store.put_bytes(reg.version_key(version, name), data)
    manifest = {"files": {name: sha256_bytes(data) for name, data in files.items()}}
    store.put_bytes(reg.version_key(version, "manifest.json"), json.dumps(manifest).encode())


def test_a_version_manifest_names_only_its_own_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    reg = ModelRegistry(store, "clipseg-drywall")
    evil = tmp_path / "evil.txt"
    _version(store, reg, "v1", {"decoder.safetensors": b"w", str(evil): b"attacker"})
    for attempt in (lambda: reg.promote("v1", None), lambda: reg.download("v1", tmp_path / "d")):
        with pytest.raises(CorruptRecord, match="file name"):
            attempt()
    assert not evil.exists() and reg.champion_version() is None

    _version(store, reg, "v2", {"config.json": b"{}"})
    with pytest.raises(CorruptRecord, match="lists no decoder.safetensors"):
        reg.promote("v2", None)
    assert reg.champion_version() is None
    with pytest.raises(InputError, match="model version"):
        reg.show("../v1")


def test_a_snapshot_manifest_or_reference_cannot_leave_its_folders(synthetic_cracks: Path, tmp_path: Path) -> None:
    from drywall_core.base.config import Settings

    store = LocalStore(tmp_path / "store")
    ref = stage_ingest(
        Context(Settings(home=tmp_path / "a", mask_workers=1), artifacts=store), synthetic_cracks, "cracks"
    )["ref"]
    name, sid = parse_ref(ref)
    for bad in (f"../{sid}", f"cracks/../{sid}"[:70], f"/{sid}", f"Cracks/{sid}", f"cracks/{sid}/.."):
        with pytest.raises(InputError, match="snapshot reference"):
            parse_ref(bad)
    key = snapshot_key(ref)
    manifest = json.loads(store.get_bytes(key))
    manifest["images"][0]["ext"] = "/../../../../escaped.jpg"
    store.put_bytes(key, json.dumps(manifest).encode())
    home = tmp_path / "b" / "home"
    with pytest.raises(CheckFailed, match="is not a file extension"):
        fetch_snapshot(store, ref, home)
    assert not list(tmp_path.rglob("*escaped*")) and not (home / "blobs").exists()


def test_a_corrupted_blob_on_this_host_is_fetched_again(synthetic_cracks: Path, tmp_path: Path) -> None:
    from drywall_core.base.config import Settings
    from drywall_core.base.fsutil import sha256_file

    store = LocalStore(tmp_path / "store")
    ref = stage_ingest(
        Context(Settings(home=tmp_path / "a", mask_workers=1), artifacts=store), synthetic_cracks, "cracks"
    )["ref"]
    home = tmp_path / "b"
    samples, _, _ = fetch_snapshot(store, ref, home)
    victim = samples[0].image
    victim.write_bytes(b"bit rot")
    again, _, stats = fetch_snapshot(store, ref, home)
    assert stats["fetched"] == 1, "only the corrupted blob is fetched again"
    assert sha256_file(victim) == samples[0].sha256, "and it is the right bytes now"


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["spec"].update(prompt="segment anything"),
        lambda m: m["spec"].update(label_strength="weak"),
        lambda m: m["lineage"].update(source="roboflow"),
        lambda m: m["validation"].update(success=True, splits=[]),
        lambda m: m["split"].update(seed=99),
        lambda m: m["images"][0].update(source="another-photo"),
        lambda m: m["images"][0].update(file="valid/elsewhere.jpg"),
    ],
    ids=["prompt", "label-strength", "lineage", "validation", "split", "source-photo", "file"],
)
def test_a_manifest_edited_in_place_is_refused(edit, synthetic_cracks: Path, tmp_path: Path) -> None:
    """The id covers everything the manifest asserts, not only the image, mask and side."""
    from drywall_core.base.config import Settings
    from drywall_core.data.snapshots import read_manifest

    store = LocalStore(tmp_path / "store")
    settings = Settings(home=tmp_path / "a", mask_workers=1)
    ref = stage_ingest(Context(settings, artifacts=store), synthetic_cracks, "cracks")["ref"]
    assert stage_ingest(Context(settings, artifacts=store), synthetic_cracks, "cracks")["ref"] == ref, (
        "re-ingest: same id"
    )
    key = snapshot_key(ref)
    manifest = json.loads(store.get_bytes(key))
    edit(manifest)
    store.put_bytes(key, json.dumps(manifest).encode())
    with pytest.raises(CheckFailed, match="does not match snapshot id"):
        read_manifest(store, ref)
