"""Roboflow source: download a dataset version in COCO format through the real ``roboflow`` SDK.

The download lands in a temporary folder beside the target, is verified (every annotation file
parses, every referenced image exists), gets a lineage record, and only then is renamed into
place: a failed or interrupted pull leaves the target absent (or as it was).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import quote, quote_plus

from drywall_core.base.errors import DrywallError, InputError
from drywall_core.base.fsutil import DISK_FULL, naming_full_disk
from drywall_core.data.exports import LINEAGE_FILE, missing_images, open_export
from drywall_core.data.sources.atomic import check_target, staged_dir
from drywall_core.data.sources.local import write_lineage

log = logging.getLogger(__name__)


class PullError(DrywallError):
    """The Roboflow download failed (after retries) or its content did not verify."""

    exit_code = 1


class Redacting(io.TextIOBase):
    """A text stream that forwards to ``target`` with the API key masked."""

    def __init__(self, target: io.TextIOBase, secret: str) -> None:
        self._target, self._secret = target, secret

    def write(self, s: str) -> int:
        self._target.write(redact(s, self._secret))
        return len(s)

    def flush(self) -> None:
        self._target.flush()


def redact(text: str, secret: str | None) -> str:
    """Mask ``secret`` in every form it travels in: raw, URL-encoded (path or query), form-encoded."""
    if not secret:
        return text
    for form in sorted({secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}, key=len, reverse=True):
        text = text.replace(form, "***")
    return text


def is_transient(exc: BaseException) -> bool:
    """Network faults, truncated zips and 5xx/429 answers are worth another try."""
    import requests

    if isinstance(exc, requests.RequestException | zipfile.BadZipFile | EOFError | ConnectionError):
        return True
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    text = str(exc).lower()
    return "unzipping" in text or "incomplete" in text or "connection" in text


def _download(workspace: str, project: str, version: int, dest: Path, api_key: str) -> None:
    """One SDK download attempt into ``dest`` (SDK chatter to stderr, key masked)."""
    import roboflow

    err = Redacting(sys.stderr, api_key)
    with contextlib.redirect_stdout(err), contextlib.redirect_stderr(err):
        rf = roboflow.Roboflow(api_key=api_key)
        ver = rf.workspace(workspace).project(project).version(version)
        ver.download("coco", location=str(dest), overwrite=True)


def _verify(dest: Path) -> None:
    export = open_export(dest)
    missing = missing_images(export)
    if missing:
        shown = ", ".join(missing[:3])
        raise PullError(f"{dest}: download incomplete: {len(missing)} referenced images missing ({shown})")


def point_sdk_at(api_url: str | None) -> None:
    """Send the SDK's next calls to ``api_url`` (a self-hosted or loopback Roboflow API).

    The SDK binds ``API_URL`` by value in each of its modules at import time, so setting the
    environment alone reaches only a process that has not imported it yet; a long-lived worker
    pulling from two APIs would silently keep the first. Every binding is repointed instead."""
    if not api_url:
        return
    os.environ["API_URL"] = api_url
    for name, module in list(sys.modules.items()):
        ours = name == "roboflow" or name.startswith("roboflow.")
        if ours and module is not None and "API_URL" in vars(module):
            vars(module)["API_URL"] = api_url


def with_retries(what: str, attempt_fn, api_key: str, retries: int, backoff_s: float, cleanup=None, error: type = None):
    """Run one SDK call with exponential backoff on transient faults; a clean, key-free ``error``
    (default :class:`PullError`) otherwise."""
    for attempt in range(retries + 1):
        try:
            return attempt_fn()
        except Exception as exc:  # noqa: BLE001 - classify, retry or re-raise with a clean message
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                if cleanup:
                    cleanup()
                raise  # not the network: a full disk is named by the caller, and retrying cannot help
            msg = redact(f"{type(exc).__name__}: {exc}", api_key)
            if cleanup:
                cleanup()
            if attempt < retries and is_transient(exc):
                delay = backoff_s * 2**attempt
                log.warning("%s: attempt %d failed (%s); retrying in %.1fs", what, attempt + 1, msg, delay)
                time.sleep(delay)
                continue
            raise (error or PullError)(f"{what} failed after {attempt + 1} attempt(s): {msg}") from None
    raise AssertionError("unreachable")


def latest_version(
    workspace: str,
    project: str,
    api_key: str | None,
    *,
    retries: int = 4,
    backoff_s: float = 1.0,
    api_url: str | None = None,
) -> int:
    """The newest published version number of a Roboflow project (the SDK's version list)."""
    if not api_key:
        raise InputError("no Roboflow API key: set DRYWALL_ROBOFLOW_API_KEY or ROBOFLOW_API_KEY")
    point_sdk_at(api_url)

    def ask() -> list[dict]:
        import roboflow

        err = Redacting(sys.stderr, api_key)
        with contextlib.redirect_stdout(err), contextlib.redirect_stderr(err):
            rf = roboflow.Roboflow(api_key=api_key)
            return rf.workspace(workspace).project(project).get_version_information()

    info = with_retries(f"roboflow {workspace}/{project}: listing versions", ask, api_key, retries, backoff_s)
    numbers = [int(n) for v in info if (n := str(v.get("id", "")).rsplit("/", 1)[-1]).isdigit()]
    if not numbers:
        raise PullError(f"roboflow {workspace}/{project}: no dataset version is published")
    return max(numbers)


def already_pulled(out: Path, workspace: str, project: str, version: int) -> bool:
    """``out`` holds exactly this Roboflow version, complete (lineage matches, every image present)."""
    lineage_file = Path(out) / LINEAGE_FILE
    try:
        lineage = json.loads(lineage_file.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    same = (lineage.get("workspace"), lineage.get("project"), lineage.get("version")) == (workspace, project, version)
    try:
        return same and not missing_images(open_export(Path(out)))
    except DrywallError:
        return False


def pull_roboflow(
    workspace: str,
    project: str,
    version: int,
    out: Path,
    api_key: str | None,
    *,
    retries: int = 4,
    backoff_s: float = 1.0,
    overwrite: bool = False,
    api_url: str | None = None,
) -> dict:
    """Download ``workspace/project/version`` as COCO into ``out``; returns the lineage record."""
    out = Path(out)
    check_target(out, overwrite)  # an unusable OUT is said before anything else
    if not api_key:
        raise InputError("no Roboflow API key: set DRYWALL_ROBOFLOW_API_KEY or ROBOFLOW_API_KEY")
    point_sdk_at(api_url)
    with staged_dir(out, "pull") as tmp, naming_full_disk(out):
        dest = tmp / "export"
        with_retries(
            f"roboflow {workspace}/{project}/{version}: download",
            lambda: _download(workspace, project, version, dest, api_key),
            api_key,
            retries,
            backoff_s,
            cleanup=lambda: shutil.rmtree(dest, ignore_errors=True),
        )
        _verify(dest)
        lineage = write_lineage(
            dest,
            {"source": "roboflow", "workspace": workspace, "project": project, "version": int(version)},
        )
        for item in dest.iterdir():
            os.replace(item, tmp / item.name)
        dest.rmdir()
    return lineage
