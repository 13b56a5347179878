"""Slices of field photos: the site (from the photo's S3 key or folder), the camera and the capture
week (from EXIF), so that drift and model signals are read per site, camera and week rather than
over every photo at once: one site's new camera hides in the average of twenty sites.

Every slice value comes from outside (a key, an EXIF string): it is reduced to a short label of
safe characters here, where it enters, so it can be a JSON key, an Evidently tag or a table cell
and never a path. A photo without the information is in the ``unknown`` slice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

SLICE_KEYS = ("site", "camera", "week")
UNKNOWN = "unknown"
LABEL_CHARS = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")

# EXIF tags (TIFF numbering): Make, Model and DateTime in IFD0; DateTimeOriginal in the Exif IFD
_MAKE, _MODEL, _DATETIME, _EXIF_IFD, _DATETIME_ORIGINAL = 0x010F, 0x0110, 0x0132, 0x8769, 0x9003


@dataclass(frozen=True)
class SliceKeys:
    site: str = UNKNOWN
    camera: str = UNKNOWN
    week: str = UNKNOWN  # ISO week of capture, e.g. 2026-W48


def label(text: object) -> str:
    """A slice value from outside as a short safe label (``unknown`` when nothing is left)."""
    cleaned = _UNSAFE.sub("_", str(text or "")).strip(" ._-")[:LABEL_CHARS].strip()
    return cleaned or UNKNOWN


def site_of(name: str, pattern: re.Pattern[str]) -> str:
    """The site in a photo's name (S3 key or path relative to the folder), by the pattern's ``site`` group."""
    m = pattern.search(name.replace("\\", "/"))
    return label(m.group("site")) if m else UNKNOWN


def exif_keys(path: Path) -> tuple[str, str]:
    """(camera, ISO week) from a photo's EXIF; ``unknown`` for what it lacks or cannot be read."""
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            taken = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
            make, model = str(exif.get(_MAKE) or "").strip(), str(exif.get(_MODEL) or "").strip()
    except Exception:  # noqa: BLE001 - a photo the reader cannot open has no slice keys; drift lists it
        return UNKNOWN, UNKNOWN
    camera = model if make and model.lower().startswith(make.lower()) else f"{make} {model}".strip()
    return label(camera), week_of(taken)


def week_of(taken: object) -> str:
    """``YYYY-Www`` of an EXIF date (``YYYY:MM:DD HH:MM:SS``); ``unknown`` when it is not one."""
    try:
        when = datetime.strptime(str(taken).strip().rstrip("\x00")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return UNKNOWN
    year, week, _ = when.isocalendar()
    return f"{year}-W{week:02d}"


def slice_keys(path: Path, name: str, pattern: re.Pattern[str]) -> SliceKeys:
    camera, week = exif_keys(path)
    return SliceKeys(site_of(name, pattern), camera, week)


def slice_frame(paths: Sequence[Path], names: Sequence[str], pattern: re.Pattern[str]) -> pd.DataFrame:
    """One row per photo: ``path`` and its slice keys."""
    rows = [{"path": str(p), **vars(slice_keys(Path(p), n, pattern))} for p, n in zip(paths, names, strict=True)]
    return pd.DataFrame(rows, columns=["path", *SLICE_KEYS])


def names_under(paths: Sequence[Path], root: Path) -> list[str]:
    """Each photo's name as its source gave it: the path relative to ``root`` (an S3 key, when the
    folder holds the keys as fetched)."""
    root = Path(root).resolve()
    out = []
    for p in paths:
        try:
            out.append(Path(p).resolve().relative_to(root).as_posix())
        except ValueError:
            out.append(Path(p).name)
    return out


_WEEK = re.compile(r"\d{4}-W(0[1-9]|[1-4]\d|5[0-3])")
TAG_SEP = ":"  # Roboflow image tags such as "site:tower-b", "camera:iPhone 15", "week:2026-W48"


def dataset_keys(entry: dict, path: Path, pattern: re.Pattern[str]) -> SliceKeys:
    """Slice keys of a dataset image, from what the dataset carries: the COCO image entry's
    ``extra`` fields (``site``, ``camera``, ``week``) or Roboflow tags ``site:...``, ``camera:...``,
    ``week:YYYY-Www`` (in ``extra.user_tags``); else the site from its upload name (``extra.name``)
    and the camera and capture week from the file's EXIF."""
    extra = entry.get("extra") if isinstance(entry.get("extra"), dict) else {}
    tags = extra.get("user_tags") if isinstance(extra.get("user_tags"), list) else []
    tagged = {}
    for t in tags:
        k, sep, v = str(t).partition(TAG_SEP)
        if sep and k.strip().lower() in SLICE_KEYS:
            tagged.setdefault(k.strip().lower(), v)

    def given(key: str) -> str:
        return label(extra.get(key) or tagged.get(key) or "")

    camera, week = exif_keys(path)
    site = given("site")
    if site == UNKNOWN:
        site = site_of(str(extra.get("name") or entry.get("file_name") or ""), pattern)
    stated_week = given("week")
    return SliceKeys(
        site,
        given("camera") if given("camera") != UNKNOWN else camera,
        stated_week if _WEEK.fullmatch(stated_week) else week,
    )


def export_slices(export: Any, pattern: re.Pattern[str] | None = None) -> dict[tuple[str, str], SliceKeys]:
    """(split, file name) -> slice keys of every image of an export that carries some (one without
    any is left out: the manifest of a dataset without slice metadata stays as it was, and so does
    its snapshot id). ``pattern``: the site pattern, the settings' default when None."""
    from drywall_core.base.config import SliceConfig

    pattern = SliceConfig().site_regex if pattern is None else pattern
    out = {}
    for name, split in export.splits.items():
        for entry in split.images:
            keys = dataset_keys(entry, split.dir / str(entry.get("file_name")), pattern)
            if any(v != UNKNOWN for v in vars(keys).values()):
                out[(name, entry.get("file_name"))] = keys
    return out


def from_record(value: object) -> SliceKeys | None:
    """Slice keys read back from a manifest entry (from outside: every value relabelled)."""
    if not isinstance(value, dict):
        return None
    return SliceKeys(*(label(value.get(k)) for k in SLICE_KEYS))
