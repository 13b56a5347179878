"""Build a folder under a temporary name beside its target, then rename it into place."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from drywall_core.base.errors import InputError
from drywall_core.base.fsutil import refuse_non_folder


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a non-empty folder unless asked to."""
    refuse_non_folder(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: folder exists and is not empty (pass --overwrite to replace it)")


@contextmanager
def staged_dir(out: Path, tag: str) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; on success it replaces ``out`` atomically.

    On any exception the temporary folder is removed and ``out`` is left as it was.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*-*"):  # left by a run that was killed outright
        if stale.is_dir() and (stale.name.startswith(f".{out.name}.{tag}-") or ".old-" in stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.{tag}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
