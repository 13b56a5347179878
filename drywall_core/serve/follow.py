"""The model a prediction service serves, and how it follows the champion alias.

The service polls the alias (``DRYWALL_SERVE__POLL_S``; an alias read is one small GET) and is
nudged at once by ``drywall.model.promoted`` when a Prefect API is configured
(:mod:`~drywall_core.serve.events`). A new version is loaded *beside* the one serving: downloaded
with every file checked against its sha256, loaded for inference, its prompts' text embeddings
computed, and run on the warm-up set recorded with it at publish time. Only if its masks there
match the recorded ones is it swapped in -- one reference assignment, so a batch already running
finishes on the model it started with. A version that fails is never swapped in: the old one
keeps serving, the refusal is kept (``/v1/models``, metrics) and emitted as
``drywall.serve.refused`` for the alert automations. A rollback is an alias move like any other.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from drywall_core.base.config import ServeConfig
from drywall_core.base.errors import InputError
from drywall_core.base.storage import IntegrityError
from drywall_core.model.load import LoadedModel
from drywall_core.stages.context import Context

log = logging.getLogger(__name__)

REFUSED_EVENT = "drywall.serve.refused"


def stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Serving:
    """A warmed model version and where it came from."""

    version: str
    loaded: LoadedModel
    since: str
    source: str
    warmup: str


@dataclass(frozen=True)
class Refusal:
    version: str
    kind: str  # checksum, load, warmup
    reason: str
    at: str


@dataclass
class Follower:
    """Holds :attr:`current` and replaces it when the alias (or the pinned version) names another."""

    ctx: Context
    cfg: ServeConfig
    on_swap: Callable[[Serving, Serving | None], None] | None = None
    on_refuse: Callable[[Refusal], None] | None = None
    on_error: Callable[[Exception], None] | None = None
    current: Serving | None = None
    challenger: Serving | None = None  # the shadow's model (DRYWALL_SERVE__SHADOW_SHARE > 0)
    refused: dict[str, Refusal] = field(default_factory=dict)
    state: str = "starting"
    _published: dict[str, str] = field(default_factory=dict)  # version -> published_at (versions never change)
    _wake: threading.Event = field(default_factory=threading.Event)
    _busy: threading.Lock = field(default_factory=threading.Lock)

    @property
    def source(self) -> str:
        return self.ctx.models.where(self.ctx.models.root)

    def target(self) -> str | None:
        """The version to serve: the pinned one, else the champion's (None: no champion yet, or unchanged)."""
        if self.cfg.version:
            return self.cfg.version
        got = self.ctx.store.read_versioned(self.ctx.models.alias_key)
        if got is None:
            self.state = f"no champion yet at {self.ctx.models.where(self.ctx.models.alias_key)}"
            return None
        try:
            version = json.loads(got[0])["version"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            self.state = f"champion alias {self.ctx.models.where(self.ctx.models.alias_key)} unreadable"
            return None
        return str(version)

    def check(self) -> Serving | None:
        """One look at the alias; loads, warms and swaps in a new version. Returns the model serving."""
        with self._busy:
            try:
                version = self.target()
            except Exception as exc:  # noqa: BLE001 - the store unreachable: keep serving, look again later
                self.state = f"cannot read the champion alias: {type(exc).__name__}: {exc}"
                log.warning("%s", self.state)
                if self.on_error:
                    self.on_error(exc)
                return self.current
            if version and (self.current is None or version != self.current.version) and version not in self.refused:
                self._load(version)
            if self.cfg.shadow_share > 0 and self.current is not None:
                self._follow_challenger()
            return self.current

    def challenger_version(self) -> str | None:
        """The pinned challenger, else the newest version published after the champion (not refused)."""
        if self.cfg.shadow_version:
            return self.cfg.shadow_version
        assert self.current is not None
        reg = self.ctx.models

        def published(version: str) -> str:
            if version not in self._published:
                self._published[version] = str(reg.show(version).get("published_at", ""))
            return self._published[version]

        champion_at = published(self.current.version)
        for version in reversed(reg.versions()):
            if version == self.current.version:
                return None
            if version not in self.refused and published(version) >= champion_at:
                return version
        return None

    def _ready(self, path: Path) -> LoadedModel:
        """A downloaded version loaded as every stage loads a model for prediction (device and
        precision from the settings), with the registry prompts' text embeddings computed once."""
        from drywall_core.model.runtime import text_embeddings_cached

        loaded = self.ctx.inference_model(path)
        text_embeddings_cached(loaded, self.ctx.prompts)  # once per model, not per request
        return loaded

    def _follow_challenger(self) -> None:
        """Load the challenger beside the champion (checksummed; no warm-up gate: it answers nobody)."""
        try:
            version = self.challenger_version()
            if version is None or version == self.current.version:
                self.challenger = None
                return
            if self.challenger is not None and self.challenger.version == version:
                return
            # beside the versions' folder, not in it: _keep sweeps that one, and a version may be named "shadow"
            folder = self.ctx.settings.home / "serve-shadow" / self.ctx.models.name
            shutil.rmtree(folder, ignore_errors=True)
            self.ctx.models.download(version, folder)
            loaded = self._ready(folder)
            where = self.ctx.models.where(self.ctx.models.version_key(version))
            self.challenger = Serving(version, loaded, stamp(), where, "shadow challenger (answers nobody)")
            log.info("shadow challenger %s loaded beside champion %s", version, self.current.version)
        except Exception as exc:  # noqa: BLE001 - no shadow is no harm: serving goes on, the next poll retries
            log.warning("shadow challenger not loaded: %s: %s", type(exc).__name__, exc)

    def _load(self, version: str) -> None:
        log.info("loading model version %s beside %s", version, self.current.version if self.current else "nothing")
        folder = self.ctx.settings.home / "serve" / self.ctx.models.name
        folder.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=folder))
        try:
            try:
                self.ctx.models.download(version, work / "model")
            except IntegrityError as exc:
                return self._refuse(version, "checksum", str(exc))
            except InputError as exc:
                return self._refuse(version, "load", str(exc))
            except Exception as exc:  # noqa: BLE001 - a transient store fault: the next poll tries again
                self.state = f"cannot download {version}: {type(exc).__name__}: {exc}"
                log.warning("%s", self.state)
                if self.on_error:
                    self.on_error(exc)
                return None
            try:
                serving = self._warm(version, work / "model")
            except Exception as exc:  # noqa: BLE001 - whatever breaks a version, it is refused, not served
                return self._refuse(version, "load", f"{type(exc).__name__}: {exc}")
            if serving is None:
                return None
            dest = folder / version
            shutil.rmtree(dest, ignore_errors=True)
            (work / "model").rename(dest)
            before, self.current = self.current, serving  # the swap: one assignment
            self.state = "serving"
            log.info("serving %s (%s)", version, serving.warmup)
            if self.on_swap:
                self.on_swap(serving, before)
            self._keep(folder, {version, before.version if before else ""})
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return None

    def _warm(self, version: str, path: Path) -> Serving | None:
        from drywall_core.release.warmup import check_warmup

        loaded = self._ready(path)
        check = check_warmup(loaded, path, self.cfg.warmup_min_iou)
        if not check.passed:
            self._refuse(version, "warmup", check.reason)
            return None
        where = self.ctx.models.where(self.ctx.models.version_key(version))
        return Serving(version, loaded, stamp(), where, check.reason)

    def _refuse(self, version: str, kind: str, reason: str) -> None:
        refusal = Refusal(version, kind, reason, stamp())
        self.refused[version] = refusal
        serving = self.current.version if self.current else None
        self.state = "serving" if serving else f"version {version} refused"
        log.warning("model version %s refused (%s): %s; still serving %s", version, kind, reason, serving or "nothing")
        if self.on_refuse:
            self.on_refuse(refusal)
        self.ctx.events.emit(
            REFUSED_EVENT,
            {"prefect.resource.id": f"drywall.serve.{socket.gethostname()}", "drywall.model": self.ctx.models.name},
            {"version": version, "kind": kind, "reason": reason, "serving": serving},
        )

    @staticmethod
    def _keep(folder: Path, versions: set[str]) -> None:
        """Only the version serving and the one before stay on disk."""
        for child in folder.iterdir():
            if child.is_dir() and child.name not in versions and not child.name.startswith("."):
                shutil.rmtree(child, ignore_errors=True)

    def nudge(self) -> None:
        """Look at the alias now (a promotion event arrived) instead of at the next poll."""
        self._wake.set()

    def follow(self, stop: threading.Event) -> None:
        """Poll until ``stop``: every ``poll_s`` seconds, or at once when nudged."""
        while not stop.is_set():
            self.check()
            self._wake.wait(self.cfg.poll_s)
            self._wake.clear()
