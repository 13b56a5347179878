"""`drywall registry` as an operator uses it: list, show, promote, rollback, audit, and repairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drywall_core.base.storage import LocalStore
from drywall_core.release.registry import ModelRegistry


@pytest.fixture
def registry(tmp_path: Path, artifact_dir: Path) -> tuple[ModelRegistry, list[str]]:
    """The CLI's own registry (under the test's DRYWALL_HOME) with three published versions."""
    reg = ModelRegistry(LocalStore(tmp_path / "home" / "registry"), "clipseg-drywall")
    versions = [reg.publish(artifact_dir, version=v)["version"] for v in ("v1", "v2", "v3")]
    return reg, versions


def test_promote_rollback_audit_round_trip(cli, registry) -> None:
    reg, _ = registry
    assert cli("registry", "promote", "v1").code == 0
    r = cli("registry", "promote", "v2", "--reason", "better on field photos")
    assert r.code == 0 and "champion: v2" in r.out
    assert "registry:" in r.err and "models/clipseg-drywall" in r.err, "says where it looked"
    listed = cli("registry", "list")
    assert listed.code == 0
    assert [ln.split()[:2] for ln in listed.out.splitlines()] == [["v1", "mIoU"], ["*", "v2"], ["v3", "mIoU"]]
    r = cli("registry", "rollback")
    assert r.code == 0 and "champion: v1 (was v2)" in r.out
    assert json.loads(cli("registry", "show").out)["version"] == "v1"
    audit = cli("registry", "audit").out.splitlines()
    assert [ln.split()[1] for ln in audit] == ["manual-promote", "manual-promote", "rollback"]
    assert "better on field photos" in audit[1]


def test_promoting_the_champion_again_keeps_the_rollback_target(cli, registry) -> None:
    reg, _ = registry
    cli("registry", "promote", "v1")
    cli("registry", "promote", "v2")
    r = cli("registry", "promote", "v2")
    assert r.code == 0 and "already the champion; nothing changed" in r.out
    assert reg.champion()[0]["previous"] == "v1"
    assert len(reg.audit_log()) == 2, "a no-op is not a promotion"
    r = cli("registry", "rollback")
    assert "champion: v1 (was v2)" in r.out


def test_corrupt_champion_alias_is_named_and_repairable(cli, registry) -> None:
    reg, _ = registry
    cli("registry", "promote", "v1")
    alias = Path(reg.store.root) / reg.alias_key
    alias.write_text('{"version": "v1", ')  # a torn write by some other tool
    for args in (("show",), ("promote", "v2"), ("rollback",)):
        r = cli("registry", *args)
        assert r.code == 2, (args, r.err)
        assert "unexpected" not in r.err and f"{alias}" in r.err and "corrupt JSON" in r.err, r.err
        assert "drywall registry promote VERSION --force" in r.err
    listed = cli("registry", "list")
    assert listed.code == 1 and [ln.split()[0] for ln in listed.out.splitlines()] == ["v1", "v2", "v3"]
    assert "corrupt JSON" in listed.err
    r = cli("registry", "promote", "v2", "--force", "--reason", "alias torn by a bad sync")
    assert r.code == 0 and "forced" in r.out
    assert reg.champion_version() == "v2"
    last = reg.audit_log()[-1]
    assert last["action"] == "forced-promote" and last["reason"] == "alias torn by a bad sync"


def test_corrupt_version_manifest_does_not_hide_the_others(cli, registry) -> None:
    reg, _ = registry
    cli("registry", "promote", "v3")
    manifest = Path(reg.store.root) / reg.version_key("v2", "manifest.json")
    manifest.write_text("[1, 2")
    listed = cli("registry", "list")
    assert listed.code == 1
    assert [ln.split()[:2] for ln in listed.out.splitlines()] == [["v1", "mIoU"], ["!", "v2"], ["*", "v3"]]
    assert f"{manifest}: corrupt JSON" in listed.err
    r = cli("registry", "show", "v2")
    assert r.code == 2 and f"{manifest}: corrupt JSON" in r.err and "unexpected" not in r.err
    r = cli("registry", "promote", "v2")
    assert r.code == 2 and f"{manifest}" in r.err
    assert reg.champion_version() == "v3", "a corrupt version never becomes champion"


def test_store_refuses_keys_that_escape_it(tmp_path: Path) -> None:
    from drywall_core.base.errors import InputError

    store = LocalStore(tmp_path / "store")
    (tmp_path / "secret.txt").write_text("outside")
    for key in ("../secret.txt", "models/../../secret.txt", "/etc/passwd"):
        with pytest.raises(InputError, match="escapes the store"):
            store.get_bytes(key)
    store.put_bytes("models/ok.txt", b"inside")
    assert store.get_bytes("models/ok.txt") == b"inside"


def test_reading_an_absent_registry_says_where_and_creates_nothing(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRYWALL_HOME", "elsewhere/.drywall")  # relative: resolved once, against the cwd
    r = cli("registry", "list")
    assert r.code == 0 and "(no champion)" in r.out
    assert f"registry: {(tmp_path / 'elsewhere' / '.drywall' / 'registry').as_uri()}" in r.err
    assert "no such folder" in r.err
    assert not (tmp_path / "elsewhere").exists(), "a read does not create an empty registry"


def test_every_version_carries_a_model_card(cli, registry) -> None:
    reg, versions = registry
    assert all("MODEL_CARD.md" in reg.show(v)["files"] for v in versions)
    assert cli("registry", "promote", "v2").code == 0
    r = cli("registry", "show", "champion", "--card")
    assert r.code == 0 and r.out.startswith("# Model card: clipseg-drywall v2")
    assert "## Intended use" in r.out and "## Known limits" in r.out and "352" in r.out
    assert "Not recorded (published from a local run folder)" in r.out, "says what it does not know"
    (reg.store.root / reg.version_key("v3", "MODEL_CARD.md")).write_text("# forged")
    assert "checksum" in cli("registry", "promote", "v3").err, "the card is verified like every other file"


def test_list_names_a_champion_that_does_not_exist_and_cut_publishes(cli, registry) -> None:
    """An alias naming a missing version is not 'nothing to show': it is named, exit 1; a version
    folder without its manifest (a publish cut off) is listed as incomplete."""
    reg, _ = registry
    assert cli("registry", "promote", "v2").code == 0
    alias = json.loads(reg.store.get_bytes(reg.alias_key))
    reg.store.put_bytes(reg.alias_key, json.dumps({**alias, "version": "v9-gone"}).encode())
    reg.store.put_bytes(reg.version_key("v4-cut", "decoder.safetensors"), b"half a publish")
    listed = cli("registry", "list")
    assert listed.code == 1, listed.out + listed.err
    assert "the champion alias names version 'v9-gone', which does not exist" in listed.err
    assert "? v4-cut  incomplete" in listed.out
    assert [ln.split()[0] for ln in listed.out.splitlines()[:3]] == ["v1", "v2", "v3"], "no champion mark"


def test_a_promotion_cut_off_after_the_alias_moved_keeps_its_audit_line(cli, registry, monkeypatch) -> None:
    """The audit line is written before the alias moves: a kill between the move and its completion
    leaves the line, recovered as done; a kill before the move reads as interrupted."""
    reg, _ = registry
    real_audit = ModelRegistry.audit

    def killed_at_completion(self, entry, attempts=20):
        if "completes" in entry:
            raise KeyboardInterrupt("killed right after the alias moved")
        return real_audit(self, entry, attempts)

    monkeypatch.setattr(ModelRegistry, "audit", killed_at_completion)
    with pytest.raises(KeyboardInterrupt):
        reg.promote("v1", None, reason="nightly")
    monkeypatch.setattr(ModelRegistry, "audit", real_audit)
    assert reg.champion_version() == "v1"
    (entry,) = reg.audit_log()
    assert entry["action"] == "promote" and entry["version"] == "v1" and entry["reason"] == "nightly"
    assert entry["outcome"].startswith("done (recovered")

    def killed_before_the_move(*args, **kwargs):
        raise KeyboardInterrupt("killed before the alias moved")

    real_write = ModelRegistry._write_alias
    monkeypatch.setattr(ModelRegistry, "_write_alias", killed_before_the_move)
    with pytest.raises(KeyboardInterrupt):
        reg.promote("v2", reg.champion()[1], reason="nightly 2")
    monkeypatch.setattr(ModelRegistry, "_write_alias", real_write)
    assert reg.champion_version() == "v1"
    assert [(e["version"], e["outcome"]) for e in reg.audit_log()][-1] == ("v2", "interrupted")
    shown = cli("registry", "audit").out
    assert "v1" in shown and "v2" in shown


def test_prune_removes_only_old_incomplete_versions(cli, registry) -> None:
    reg, versions = registry
    reg.store.put_bytes(reg.version_key("v4-cut", "decoder.safetensors"), b"half a publish")
    young = cli("registry", "prune")
    assert young.code == 0 and "removed 0" in young.out, "a young folder may be a publish under way"
    assert reg.incomplete() == ["v4-cut"]
    old = cli("registry", "prune", "--older-than-hours", "0")
    assert old.code == 0 and "v4-cut" in old.out
    assert reg.incomplete() == [] and reg.versions() == versions, "complete versions untouched"
    assert reg.audit_log()[-1]["action"] == "prune-incomplete"


def test_a_model_reference_names_a_registry_version(cli, registry, tmp_path: Path) -> None:
    """`--model registry:champion` / `registry:<version>` wherever a model is taken, `registry pull`,
    and `registry list` with each version's date and status."""
    import numpy as np
    from PIL import Image

    reg, versions = registry
    photo = tmp_path / "wall.jpg"
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(photo)
    none_yet = cli("predict", photo, "--prompt", "segment crack", "--model", "registry:champion", "--out", tmp_path)
    assert none_yet.code == 1 and "names no champion yet" in none_yet.err, none_yet.err
    assert cli("registry", "promote", "v2").code == 0
    r = cli("predict", photo, "--prompt", "segment crack", "--model", "registry:champion", "--out", tmp_path / "p")
    assert r.code == 0, r.err
    assert (tmp_path / "p" / "wall__segment_crack.png").is_file()
    pinned = cli("model", "info", "registry:v3")
    assert pinned.code == 0, pinned.err
    missing = cli("model", "info", "registry:v-nope")
    assert missing.code == 2 and "v-nope" in missing.err, missing.err
    hostile = cli("model", "info", "registry:../v1")
    assert hostile.code == 2 and "model version" in hostile.err, hostile.err

    pulled = cli("registry", "pull", "champion", tmp_path / "pulled")
    assert pulled.code == 0 and (tmp_path / "pulled" / "decoder.safetensors").is_file(), pulled.err
    assert cli("model", "info", tmp_path / "pulled").code == 0, "a pulled version loads as --model"

    assert cli("registry", "promote", "v3").code == 0
    lines = {
        ln.split()[1] if ln.startswith("*") else ln.split()[0]: ln for ln in cli("registry", "list").out.splitlines()
    }
    assert lines["v3"].endswith("champion") and lines["v2"].endswith("promoted before"), lines
    assert lines["v1"].endswith("published") and "T" in lines["v1"].split()[5], "the publish date is shown"
