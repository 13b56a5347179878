"""Registry and storage on both backends: a local folder and a real S3 server (SeaweedFS)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from drywall_core.base.storage import Conflict, IntegrityError, LocalStore, S3Store
from drywall_core.release.registry import ModelRegistry

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path):
    if request.param == "local":
        return LocalStore(tmp_path / "registry")
    server = request.getfixturevalue("s3_server")
    return S3Store(server.bucket, prefix=f"t/{tmp_path.name}", client=server.client())


def test_publish_promote_download(store, artifact_dir: Path, tmp_path: Path) -> None:
    reg = ModelRegistry(store, "m")
    rec = reg.publish(artifact_dir, extra={"dataset_version": "cracks@1"})
    v = rec["version"]
    assert reg.versions() == [v]
    assert set(rec["files"]) == {"decoder.safetensors", "config.json", "metrics.json", "MODEL_CARD.md"}
    assert reg.champion() is None
    reg.promote(v, None, reason="first")
    assert reg.champion_version() == v
    got = reg.download(v, tmp_path / "dl")
    for name, digest in rec["files"].items():
        assert len(digest) == 64
        if name != "MODEL_CARD.md":  # written by the registry at publication
            assert (got / name).read_bytes() == (artifact_dir / name).read_bytes(), name
    assert (got / "MODEL_CARD.md").read_text().startswith(f"# Model card: m {v}")
    from drywall_core.model.load import load_model

    assert load_model(got).manifest["version"] == v
    log = reg.audit_log()
    assert [e["action"] for e in log] == ["promote"] and log[0]["reason"] == "first"


def test_versions_are_immutable(store, artifact_dir: Path) -> None:
    reg = ModelRegistry(store, "m")
    reg.publish(artifact_dir, version="v1")
    with pytest.raises(Conflict):
        reg.publish(artifact_dir, version="v1")


def test_two_concurrent_promotions_exactly_one_wins(store, artifact_dir: Path) -> None:
    reg = ModelRegistry(store, "m")
    a, b, c = (reg.publish(artifact_dir, version=v)["version"] for v in ("va", "vb", "vc"))
    reg.promote(a, None)
    _, etag = reg.champion()
    barrier = threading.Barrier(2)
    outcome: dict[str, str] = {}

    def race(version: str) -> None:
        barrier.wait()
        try:
            ModelRegistry(store, "m").promote(version, etag, reason="race")
            outcome[version] = "won"
        except Conflict:
            outcome[version] = "lost"

    threads = [threading.Thread(target=race, args=(v,)) for v in (b, c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome.values()) == ["lost", "won"]
    winner = next(v for v, o in outcome.items() if o == "won")
    assert reg.champion_version() == winner
    assert [e["version"] for e in reg.audit_log()] == [a, winner]


def test_two_first_promotions_exactly_one_wins(store, artifact_dir: Path) -> None:
    reg = ModelRegistry(store, "m")
    reg.publish(artifact_dir, version="v1")
    reg.publish(artifact_dir, version="v2")
    reg.promote("v1", None)
    with pytest.raises(Conflict):
        reg.promote("v2", None)
    assert reg.champion_version() == "v1"


def test_crash_between_upload_and_alias_move_keeps_old_champion(store, artifact_dir: Path, monkeypatch) -> None:
    reg = ModelRegistry(store, "m")
    reg.publish(artifact_dir, version="old")
    reg.promote("old", None)
    reg.publish(artifact_dir, version="new")
    _, etag = reg.champion()

    def crash(*_a, **_k):
        raise ConnectionError("network gone while moving the alias")

    monkeypatch.setattr(store, "replace", crash)
    with pytest.raises(ConnectionError):
        reg.promote("new", etag)
    monkeypatch.undo()
    assert reg.champion_version() == "old"
    assert "new" in reg.versions()


def test_corrupted_upload_is_refused(store, artifact_dir: Path, monkeypatch, tmp_path: Path) -> None:
    reg = ModelRegistry(store, "m")
    real_put = store.put_file

    def corrupting_put(local: Path, key: str) -> str:
        if key.endswith("decoder.safetensors"):
            bad = tmp_path / "bad.bin"
            data = bytearray(Path(local).read_bytes())
            data[100] ^= 0xFF
            bad.write_bytes(bytes(data))
            sha = real_put(local, key)
            # the bytes at rest get damaged after the client computed its checksum
            store.put_bytes(key, bad.read_bytes()) if isinstance(store, S3Store) else Path(
                store.root / key
            ).write_bytes(bad.read_bytes())
            return sha
        return real_put(local, key)

    monkeypatch.setattr(store, "put_file", corrupting_put)
    rec = reg.publish(artifact_dir, version="v1")
    monkeypatch.undo()
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        reg.promote(rec["version"], None)
    assert reg.champion() is None
    with pytest.raises(IntegrityError):
        reg.download("v1", tmp_path / "dl")
    assert not (tmp_path / "dl" / "decoder.safetensors").exists()


def test_artifact_not_matching_its_manifest_is_not_published(store, artifact_dir: Path, tmp_path: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(artifact_dir, broken)
    (broken / "metrics.json").write_text("{}")
    reg = ModelRegistry(store, "m")
    with pytest.raises(IntegrityError):
        reg.publish(broken, version="v1")
    assert reg.versions() == []


def test_rollback(store, artifact_dir: Path) -> None:
    reg = ModelRegistry(store, "m")
    for v in ("v1", "v2"):
        reg.publish(artifact_dir, version=v)
    reg.promote("v1", None)
    reg.promote("v2", reg.champion()[1])
    reg.rollback()
    assert reg.champion_version() == "v1"
    assert [e["action"] for e in reg.audit_log()] == ["promote", "promote", "rollback"]


def test_audit_appends_concurrently_without_losing_lines(store) -> None:
    reg = ModelRegistry(store, "m")

    def write(i: int) -> None:
        for j in range(5):
            ModelRegistry(store, "m").audit({"action": "note", "i": i, "j": j})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log = reg.audit_log()
    assert len(log) == 20
    assert {(e["i"], e["j"]) for e in log} == {(i, j) for i in range(4) for j in range(5)}


def test_s3_multipart_upload_verified(s3_server, tmp_path: Path) -> None:
    store = S3Store(s3_server.bucket, prefix="mp", client=s3_server.client(), multipart_mb=5)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (12 * 4096))  # 12 MiB -> 3 parts
    sha = store.put_file(big, "big.bin")
    store.get_file("big.bin", tmp_path / "back.bin", sha)
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key="mp/big.bin")
    assert "-" in head["ETag"], "uploaded in parts"
    assert json.loads(json.dumps(store.link("big.bin"))).startswith("http://127.0.0.1")
