"""Model registry on an artifact store (local folder or S3), the same layout on both::

    <root>/models/<name>/versions/<version>/  decoder.safetensors, config.json, metrics.json, ...,
                                               manifest.json (written last, sha256 of every file)
    <root>/models/<name>/aliases/champion.json {"version", "sha256", "promoted_at", "previous"}
    <root>/models/<name>/audit.jsonl           one line per gate decision, promotion or rollback

Versions are written once: files first (each verified after upload), the manifest last with a
create-only write, so a version is visible only when complete. The champion alias moves with a
compare-and-swap write, so of two concurrent promotions exactly one wins; a crash between upload
and alias move leaves the old champion in place.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drywall_core.base.errors import CheckFailed, InputError
from drywall_core.base.fsutil import check_segment, inside
from drywall_core.base.storage import ArtifactStore, Conflict, IntegrityError, NotFound, sha256_bytes, sha256_file
from drywall_core.model.load import DECODER_FILE, MANIFEST_FILE, read_manifest
from drywall_core.release.model_card import CARD_FILE, render_card

CHAMPION = "champion"
REPAIR = "repair: drywall registry promote VERSION --force (audited)"


class CorruptRecord(InputError):
    """A registry file that exists but cannot be read as what it should be (exit 2)."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_version_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


class ModelRegistry:
    def __init__(self, store: ArtifactStore, name: str = "clipseg-drywall") -> None:
        self.store, self.name = store, name
        self.root = f"models/{name}"

    # keys
    def version_key(self, version: str, file: str = "") -> str:
        check_segment(version, "model version")
        return f"{self.root}/versions/{version}/{file}".rstrip("/")

    @property
    def alias_key(self) -> str:
        return f"{self.root}/aliases/{CHAMPION}.json"

    @property
    def audit_key(self) -> str:
        return f"{self.root}/audit.jsonl"

    # versions
    def publish(
        self,
        artifact_dir: Path,
        version: str | None = None,
        extra: dict[str, Any] | None = None,
        extra_files: Sequence[Path] = (),
    ) -> dict:
        """Upload every file of a model artifact (and ``extra_files``: the warm-up set), verified; the
        manifest goes last (create-only)."""
        artifact_dir = Path(artifact_dir)
        manifest = read_manifest(artifact_dir)
        version = version or new_version_id()
        if self.store.exists(self.version_key(version, MANIFEST_FILE)):
            raise Conflict(f"version {version} already exists; versions are immutable")
        files = {}
        own = sorted(p for p in artifact_dir.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
        clash = {p.name for p in own} & {Path(p).name for p in extra_files}
        if clash:
            raise InputError(f"{artifact_dir}: already holds {', '.join(sorted(clash))}; refusing to publish over it")
        for path in [*own, *map(Path, extra_files)]:
            check_segment(path.name, "file name")
            digest = sha256_file(path)
            recorded = manifest.get("files", {}).get(path.name)
            if recorded and recorded != digest:
                raise IntegrityError(f"{path}: checksum mismatch against its manifest")
            files[path.name] = self.store.put_file(path, self.version_key(version, path.name))
        record = {
            **manifest,
            **(extra or {}),
            "version": version,
            "model_name": self.name,
            "published_at": now(),
            "files": files,
        }
        metrics_file = artifact_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        card = render_card(record, metrics if isinstance(metrics, dict) and "datasets" in metrics else None).encode()
        self.store.put_bytes(self.version_key(version, CARD_FILE), card)
        files[CARD_FILE] = sha256_bytes(card)
        self.store.create(self.version_key(version, MANIFEST_FILE), json.dumps(record, indent=2).encode())
        return record

    def card(self, version: str) -> str:
        """The version's MODEL_CARD.md (versions published before cards existed get one rendered now)."""
        record = self.show(version)
        if CARD_FILE in record["files"]:
            return self.store.get_bytes(self.version_key(version, CARD_FILE)).decode()
        return render_card(record)

    def versions(self) -> list[str]:
        suffix = "/" + MANIFEST_FILE
        keys = self.store.list(f"{self.root}/versions/")
        return sorted(k.split("/")[-2] for k in keys if k.endswith(suffix))

    def incomplete(self) -> list[str]:
        """Version folders holding files but no manifest: a publish cut off (or still uploading)."""
        prefix = f"{self.root}/versions/"
        folders = {k[len(prefix) :].split("/", 1)[0] for k in self.store.list(prefix) if "/" in k[len(prefix) :]}
        return sorted(folders - set(self.versions()))

    def prune_incomplete(self, older_than_s: float, now_s: float | None = None) -> list[str]:
        """Remove version folders without a manifest whose newest file is older than ``older_than_s``
        (a younger one may be a publish still uploading); returns the versions removed, audited."""
        import time

        now_s = time.time() if now_s is None else now_s
        removed = []
        for version in self.incomplete():
            keys = self.store.list(self.version_key(version) + "/")
            if keys and now_s - max(self.store.modified(k) for k in keys) < older_than_s:
                continue
            for key in keys:
                self.store.delete(key)
            self.audit({"action": "prune-incomplete", "version": version, "reason": f"{len(keys)} files, no manifest"})
            removed.append(version)
        return removed

    def where(self, key: str) -> str:
        return f"{self.store.url}/{key}"

    def _record(self, key: str, data: bytes, must_have: tuple[str, ...]) -> dict[str, Any]:
        """Parse a stored JSON record; a corrupt one names its file and the fault."""
        try:
            record = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CorruptRecord(f"{self.where(key)}: corrupt JSON ({exc})") from None
        missing = [k for k in must_have if not isinstance(record, dict) or k not in record]
        if missing:
            raise CorruptRecord(f"{self.where(key)}: not a registry record (missing {', '.join(missing)})")
        return record

    def show(self, version: str) -> dict[str, Any]:
        key = self.version_key(version, MANIFEST_FILE)
        try:
            data = self.store.get_bytes(key)
        except NotFound:
            raise InputError(f"model '{self.name}' has no version '{version}'") from None
        record = self._record(key, data, ("files",))
        files = record["files"]
        if not isinstance(files, dict) or not all(isinstance(d, str) and len(d) == 64 for d in files.values()):
            raise CorruptRecord(f"{self.where(key)}: 'files' is not a map of file name to sha256")
        for name in files:
            try:
                check_segment(name, "file name")
            except InputError as exc:
                raise CorruptRecord(f"{self.where(key)}: {exc}") from None
        if DECODER_FILE not in files:
            raise CorruptRecord(f"{self.where(key)}: the version lists no {DECODER_FILE}; not a model version")
        return record

    def verify(self, version: str) -> dict[str, Any]:
        """Every file of the version is present with its recorded sha256 (downloads and hashes)."""
        record = self.show(version)
        with tempfile.TemporaryDirectory() as tmp:
            for name, digest in record["files"].items():
                self.store.get_file(self.version_key(version, name), inside(Path(tmp), name, "file name"), digest)
        return record

    def download(self, version: str, dest: Path) -> Path:
        """Fetch a version into ``dest`` with checksum verification; refuses corrupted files."""
        record = self.show(version)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        for name, digest in record["files"].items():
            self.store.get_file(self.version_key(version, name), inside(dest, name, "file name"), digest)
        (dest / MANIFEST_FILE).write_text(json.dumps(record, indent=2))
        return dest

    # champion alias
    def champion(self) -> tuple[dict[str, Any], str] | None:
        """The champion alias and its etag; a corrupt alias raises :class:`CorruptRecord` with the repair."""
        got = self.store.read_versioned(self.alias_key)
        if got is None:
            return None
        try:
            return self._record(self.alias_key, got[0], ("version",)), got[1]
        except CorruptRecord as exc:
            raise CorruptRecord(f"{exc}; {REPAIR}") from None

    def champion_version(self) -> str | None:
        c = self.champion()
        return c[0]["version"] if c else None

    def promote(
        self,
        version: str,
        expected: str | None,
        reason: str = "",
        decision: dict | None = None,
        action: str = "promote",
    ) -> dict[str, Any]:
        """Move the champion alias to ``version`` if it still is what the caller saw (``expected`` etag).

        ``expected`` is None when the caller saw no champion. Raises :class:`Conflict` if another
        run moved the alias in between. The version is verified before the alias moves. Promoting
        the champion itself changes nothing (the rollback target is kept): the alias comes back
        with ``unchanged`` set.
        """
        record = self.verify(version)
        current = self.champion()
        if current and current[0]["version"] == version:
            return {**current[0], "unchanged": True}
        previous = current[0]["version"] if current else None
        entry = {"action": action, "version": version, "previous": previous, "reason": reason, "decision": decision}
        return self._audited_move(entry, lambda: self._write_alias(version, record, previous, expected))

    def force_promote(self, version: str, reason: str = "manual repair") -> dict[str, Any]:
        """Repair: point the champion at ``version`` whatever the alias holds now (even corrupt); audited."""
        record = self.verify(version)
        got = self.store.read_versioned(self.alias_key)
        try:  # the alias being replaced, read once: its etag guards the write, its version is kept
            previous = self._record(self.alias_key, got[0], ("version",))["version"] if got else None
        except CorruptRecord:
            previous = None
        entry = {"action": "forced-promote", "version": version, "previous": previous, "reason": reason}
        return self._audited_move(
            entry,
            lambda: self._write_alias(
                version, record, previous if previous != version else None, got[1] if got else None
            ),
        )

    def _audited_move(self, entry: dict[str, Any], move: Any) -> dict[str, Any]:
        """The audit line is written before the alias moves (``pending``) and completed after it, so a
        promotion cut off between the two still leaves its line (``audit_log`` recovers its outcome)."""
        intent = secrets.token_hex(8)
        self.audit({**entry, "id": intent, "outcome": "pending"})
        try:
            alias = move()
        except Conflict:
            self.audit({"completes": intent, "outcome": "lost"})
            raise
        self.audit({"completes": intent, "outcome": "done"})
        return alias

    def _write_alias(self, version: str, record: dict[str, Any], previous: str | None, expected: str | None) -> dict:
        """Point the champion alias at ``version``: create it (``expected`` None) or compare-and-swap."""
        alias = {
            "version": version,
            "sha256": sha256_bytes(json.dumps(record, sort_keys=True).encode()),
            "promoted_at": now(),
            "previous": previous,
        }
        body = json.dumps(alias, indent=2).encode()
        if expected is None:
            self.store.create(self.alias_key, body)
        else:
            self.store.replace(self.alias_key, body, expected)
        return alias

    def settle(self, version: str, expected: str | None, decision: dict[str, Any]) -> dict[str, Any]:
        """Act on a gate decision for a published ``version``: move the champion (compare-and-swap
        against the alias the gate saw) or record the refusal; a lost race is recorded as one."""
        reason = "; ".join(decision["reasons"])
        if decision["promote"]:
            try:
                self.promote(version, expected, reason=reason, decision=decision)
                return {"promoted": True, "version": version, "reason": reason}
            except Conflict:
                won = self.champion_version()
                reason = f"a concurrent run promoted {won} first"
                self.audit(
                    {"action": "refuse", "version": version, "champion": won, "reason": reason, "decision": decision}
                )
                return {"promoted": False, "version": version, "reason": f"lost the promotion race to {won}"}
        self.audit(
            {
                "action": "refuse",
                "version": version,
                "champion": self.champion_version(),
                "reason": reason,
                "decision": decision,
            }
        )
        return {"promoted": False, "version": version, "reason": reason}

    def rollback(self, to: str | None = None, reason: str = "manual rollback") -> dict[str, Any]:
        """Point the champion back at ``to`` (default: the champion before the current one)."""
        current = self.champion()
        if current is None:
            raise CheckFailed("no champion to roll back")
        target = to or current[0].get("previous")
        if not target:
            raise CheckFailed(f"champion {current[0]['version']} has no previous version to roll back to")
        return self.promote(target, current[1], reason=reason, action="rollback")

    # audit
    def audit(self, entry: dict[str, Any], attempts: int = 20) -> None:
        """Append one JSON line (read-modify-write with compare-and-swap, so no line is lost)."""
        line = json.dumps({"at": now(), "model": self.name, **entry}, default=str) + "\n"
        for _ in range(attempts):
            got = self.store.read_versioned(self.audit_key)
            try:
                if got is None:
                    self.store.create(self.audit_key, line.encode())
                else:
                    self.store.replace(self.audit_key, got[0] + line.encode(), got[1])
                return
            except Conflict:
                continue
        raise Conflict(f"{self.audit_key}: could not append after {attempts} attempts")

    def audit_log(self) -> list[dict[str, Any]]:
        """Every audit line; an unreadable line is kept as an ``unreadable`` entry naming it."""
        got = self.store.read_versioned(self.audit_key)
        entries = []
        for n, line in enumerate(got[0].decode(errors="replace").splitlines() if got else [], start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                entries.append(entry if isinstance(entry, dict) else {"value": entry})
            except json.JSONDecodeError as exc:
                entries.append(
                    {"at": "?", "action": "unreadable", "reason": f"{self.where(self.audit_key)}:{n}: {exc}"}
                )
        return self._fold(entries)

    def _fold(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One entry per decision: a move's completion folded into its line, a lost race's move
        dropped (the refusal says so), and a move cut off before its completion recovered from the
        alias: done if the champion is that version since then, else ``interrupted``."""
        outcomes = {e["completes"]: e.get("outcome") for e in entries if "completes" in e}
        try:
            alias = self.champion()
        except CorruptRecord:
            alias = None
        folded = []
        for e in entries:
            if "completes" in e:
                continue
            if e.get("outcome") == "pending":
                outcome = outcomes.get(e.get("id"))
                if outcome == "lost":
                    continue
                if outcome is None:
                    recovered = alias and alias[0]["version"] == e.get("version")
                    recovered = recovered and str(alias[0].get("promoted_at", "")) >= str(e.get("at", ""))
                    outcome = "done (recovered: cut off after the alias moved)" if recovered else "interrupted"
                e = {**e, "outcome": outcome}
            folded.append(e)
        return folded


REGISTRY_REF = "registry:"


def resolve_model(ref: str | Path, settings: Any) -> str:
    """``registry:champion`` or ``registry:<version>`` (of the registry in force, local or S3) as a
    verified local copy under ``$DRYWALL_HOME/models/registry/``; any other reference unchanged.

    Without this, ``--model champion`` was taken for a hub id and failed after 42 s of retries."""
    ref = str(ref)
    if not ref.startswith(REGISTRY_REF):
        return ref
    from drywall_core.base.storage import store_from_settings

    what = ref[len(REGISTRY_REF) :]
    reg = ModelRegistry(store_from_settings(settings), settings.model_name)
    version = reg.champion_version() if what == "champion" else what
    if not version:
        raise CheckFailed(f"{ref}: {reg.where(reg.alias_key)} names no champion yet")
    check_segment(version, f"model version of '{ref}'")
    dest = Path(settings.home) / "models" / "registry" / reg.name / version
    if not (dest / MANIFEST_FILE).is_file():
        with tempfile.TemporaryDirectory(dir=ensure_parent(dest)) as tmp:
            reg.download(version, Path(tmp) / version)
            (Path(tmp) / version).rename(dest)
    return str(dest)


def ensure_parent(path: Path) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Path(path).parent
