"""Atomic file writes: a temporary name in the target folder, then ``os.replace``.

Readers never see half a file, and a crash leaves the previous version (or nothing) in place.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from drywall_core.base.errors import InputError, OutputError

TEMP_SUFFIX = ".tmp"
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})  # where a write cannot succeed: exit 2
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
        try:
            with os.fdopen(fd, mode) as f:
                yield f
        except OSError as exc:
            if exc.errno in DISK_FULL:  # a write (or the close that flushes it) found no room
                raise OutputError(f"{path}: {os.strerror(exc.errno).lower()}") from None
            raise
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise OutputError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def naming_full_disk(path: Path) -> Iterator[None]:
    """Writes by a library (PIL, safetensors, GX) name no file when the disk fills: name the output."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL and exc.filename is None:
            raise OutputError(f"{path}: {os.strerror(exc.errno).lower()}") from None
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


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME = 1024


def check_relative(name: object, what: str) -> str:
    """A relative path that came from outside (an S3 key, a file name in a manifest or an export).

    Refused by name unless it is plain: a non-empty string of at most 1024 characters, without
    control characters (NUL, escapes), backslashes or a leading ``/``, and without an empty, ``.``
    or ``..`` segment. Checked where the name enters, before any path or key is built from it.
    """
    if not isinstance(name, str) or not name:
        raise InputError(f"{what}: {name!r} is not a name")
    shown = name[:80].encode("unicode_escape").decode()
    if len(name) > MAX_NAME:
        raise InputError(f"{what} '{shown}...': longer than {MAX_NAME} characters")
    if _CONTROL.search(name):
        raise InputError(f"{what} '{shown}': holds a control character")
    if name.startswith("/") or "\\" in name:
        raise InputError(f"{what} '{shown}': an absolute path or a backslash; a relative name is expected")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise InputError(f"{what} '{shown}': an empty, '.' or '..' path segment")
    return name


def check_segment(name: object, what: str) -> str:
    """One path segment from outside (a file name of a model version, a staging id): no ``/`` either."""
    check_relative(name, what)
    if "/" in str(name):
        raise InputError(f"{what} '{name}': one file name is expected, not a path")
    return str(name)


def inside(root: Path, name: object, what: str) -> Path:
    """``root / name`` for a name from outside, refused unless it stays inside ``root`` (symlinks too)."""
    check_relative(name, what)
    base = Path(root).resolve()
    path = (base / str(name)).resolve()
    if not path.is_relative_to(base):
        raise InputError(f"{what} '{name}': resolves outside {base}")
    return path
