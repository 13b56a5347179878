"""Registry operations: list (with each version's status), pull, show, promote, rollback, prune, audit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drywall_core.base.errors import CheckFailed, InputError
from drywall_core.stages.context import Context

MOVED = ("promote", "manual-promote", "forced-promote", "rollback")


def where(ctx: Context) -> str:
    """Where the registry in force lives, said plainly when it is an empty local folder."""
    from drywall_core.base.storage import LocalStore

    reg = ctx.models
    text = f"{reg.store.url}/{reg.root}"
    if isinstance(reg.store, LocalStore) and not (reg.store.root / reg.root).exists():
        text += " (empty: no such folder; is DRYWALL_HOME right?)"
    return text


def version_history(log: list[dict[str, Any]]) -> dict[str, str]:
    """Per version, what the audit log says happened to it last: promoted before, or refused."""
    status: dict[str, str] = {}
    for e in log:
        v = e.get("version")
        if not v:
            continue
        if e.get("action") in MOVED and not str(e.get("outcome", "done")).startswith("interrupted"):
            status[v] = "promoted before"
        elif e.get("action") == "refuse" and status.get(v) != "promoted before":
            status[v] = "refused"
    return status


@dataclass
class VersionRow:
    version: str
    status: str  # champion, promoted before, refused, published, unreadable
    miou: float = float("nan")
    mean_dice: float = float("nan")
    published_at: str = "-"


@dataclass
class Listing:
    champion: str | None
    rows: list[VersionRow] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def list_versions(ctx: Context) -> Listing:
    """Every version, newest last, with its status; unreadable records and a dangling alias are problems."""
    from drywall_core.release.registry import CorruptRecord

    reg = ctx.models
    problems: list[str] = []
    try:
        champion = reg.champion_version()
    except CorruptRecord as exc:
        champion, problems = None, [str(exc)]
    versions = reg.versions()
    if champion and champion not in versions:
        problems.append(
            f"{reg.where(reg.alias_key)}: the champion alias names version '{champion}', which does not exist "
            "(repair: drywall registry promote VERSION --force)"
        )
    history = version_history(reg.audit_log())
    listing = Listing(champion, problems=problems, incomplete=reg.incomplete())
    for v in versions:
        try:
            record = reg.show(v)
        except CorruptRecord as exc:
            problems.append(str(exc))
            listing.rows.append(VersionRow(v, "unreadable"))
            continue
        m = record.get("metrics", {})
        status = "champion" if v == champion else history.get(v, "published")
        nan = float("nan")
        listing.rows.append(
            VersionRow(v, status, m.get("miou", nan), m.get("mean_dice", nan), record.get("published_at", "-"))
        )
    return listing


def version_of(ctx: Context, version: str) -> str:
    """``champion`` -> the champion's version id; any other id unchanged."""
    v = ctx.models.champion_version() if version == "champion" else version
    if not v:
        raise CheckFailed("no champion yet")
    return v


def pull(ctx: Context, version: str, out: Path) -> str:
    """A version (every file checked against its sha256) into an empty or new folder ``out``."""
    from drywall_core.base.fsutil import refuse_non_folder

    v = version_of(ctx, version)
    refuse_non_folder(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out}: folder exists and is not empty")
    ctx.models.download(v, out)
    return v


PROMOTED_EVENT = "drywall.model.promoted"


@dataclass(frozen=True)
class AliasMove:
    """What a promotion or rollback did to the champion alias."""

    version: str
    previous: str | None
    action: str  # manual-promote, forced-promote, rollback
    unchanged: bool = False  # the version was the champion already: nothing moved
    event_id: str | None = None  # drywall.model.promoted, when it moved and an API took it


def announce(ctx: Context, alias: dict[str, Any], action: str) -> AliasMove:
    """``drywall.model.promoted`` after the champion alias moved: prediction services load the new
    champion at once instead of at their next poll. Nothing moved (``unchanged``): no event."""
    unchanged = bool(alias.get("unchanged"))
    event_id = None
    if not unchanged:
        event_id = ctx.events.emit(
            PROMOTED_EVENT,
            {"prefect.resource.id": f"drywall.model.{ctx.models.name}"},
            {"version": alias["version"], "previous": alias.get("previous"), "action": action},
        )
    return AliasMove(alias["version"], alias.get("previous"), action, unchanged, event_id)


def promote(ctx: Context, version: str, reason: str, force: bool = False) -> AliasMove:
    """Make ``version`` the champion by hand (compare-and-swap, audited); ``force`` repairs a corrupt alias."""
    reg = ctx.models
    if force:
        return announce(ctx, reg.force_promote(version, reason=reason), "forced-promote")
    current = reg.champion()
    alias = reg.promote(version, current[1] if current else None, reason=reason, action="manual-promote")
    return announce(ctx, alias, "manual-promote")


def rollback(ctx: Context, to: str | None = None) -> AliasMove:
    """Point the champion back (default: the one before it), audited and announced."""
    return announce(ctx, ctx.models.rollback(to), "rollback")
