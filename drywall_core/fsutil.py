"""Atomic file writes: a temporary name in the target folder, then ``os.replace``.

Readers never see half a file, and a crash leaves the previous version (or nothing) in place.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from drywall_core.errors import OutputError

TEMP_SUFFIX = ".tmp"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: Path, mode: str = "w", file_mode: int | None = None) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success.

    ``file_mode`` (e.g. 0o600 for a file of secrets) replaces the usual umask-derived permissions;
    the file never exists under its final name with other permissions.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise OutputError(f"{path.parent}: cannot write here ({exc.strerror or exc})") from None
    os.fchmod(fd, file_mode if file_mode is not None else 0o666 & ~_UMASK)  # mkstemp makes 0600
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files that a killed writer left under ``folder`` (``.<name>.<random>.tmp``)."""
    removed = 0
    for p in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def refuse_non_folder(path: Path) -> None:
    """An output folder cannot be (or sit under) a file: say so in one line (exit 2)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: output folder is a file")
    if any(p.exists() and not p.is_dir() for p in path.parents):
        raise OutputError(f"{path}: a parent of the output folder is a file")


def ensure_dir(path: Path) -> Path:
    """Create an output folder, or say in one line why it cannot be one (exit 2)."""
    path = Path(path)
    refuse_non_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create output folder ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: output folder is not writable")
    return path


def atomic_write_text(path: Path, text: str, file_mode: int | None = None) -> None:
    with atomic_open(path, "w", file_mode=file_mode) as f:
        f.write(text)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Streamed sha256 of a file (the checksum in lineage records, manifests and the registry)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
