"""A Roboflow COCO export on disk: ``<root>/<split>/_annotations.coco.json`` plus the images.

Opening an export reads and sanity-checks the JSON structure only; content checks (bboxes,
polygons, files) belong to :mod:`drywall_core.data.validation`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drywall_core.base.errors import InputError
from drywall_core.base.fsutil import sha256_file

__all__ = [
    "ANNOTATION_FILE",
    "LINEAGE_FILE",
    "Export",
    "Split",
    "missing_images",
    "open_export",
    "read_coco",
    "sha256_file",
]

ANNOTATION_FILE = "_annotations.coco.json"
LINEAGE_FILE = "drywall_lineage.json"
REQUIRED_KEYS = ("images", "annotations", "categories")


@dataclass
class Split:
    """One split of an export (``train``, ``valid``, ``test``...)."""

    name: str
    dir: Path
    coco: dict[str, Any]

    @property
    def annotation_path(self) -> Path:
        return self.dir / ANNOTATION_FILE

    @property
    def images(self) -> list[dict[str, Any]]:
        return self.coco["images"]

    @property
    def annotations(self) -> list[dict[str, Any]]:
        return self.coco["annotations"]

    @property
    def categories(self) -> list[dict[str, Any]]:
        return self.coco["categories"]

    def used_category_names(self) -> list[str]:
        names = {c.get("id"): str(c.get("name", "")) for c in self.categories if isinstance(c, dict)}
        used = {a.get("category_id") for a in self.annotations if isinstance(a, dict)}
        return sorted({names[i] for i in used if i in names})


@dataclass
class Export:
    root: Path
    splits: dict[str, Split] = field(default_factory=dict)

    @property
    def lineage(self) -> dict[str, Any] | None:
        path = self.root / LINEAGE_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def guess_project(self) -> str:
        """Roboflow project slug from lineage, else from a folder name like ``cracks.v1i.coco``."""
        lineage = self.lineage
        if lineage and lineage.get("project"):
            return str(lineage["project"])
        return re.split(r"\.v\d+", self.root.resolve().name, maxsplit=1)[0]


def read_coco(path: Path) -> dict[str, Any]:
    """Parse one COCO annotation file; unreadable or structurally wrong input raises InputError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read annotation file ({exc})") from exc
    try:
        coco = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: corrupt JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(coco, dict):
        raise InputError(f"{path}: not a COCO file (top level is {type(coco).__name__}, not an object)")
    missing = [k for k in REQUIRED_KEYS if not isinstance(coco.get(k), list)]
    if missing:
        raise InputError(f"{path}: not a COCO file (missing or non-list keys: {', '.join(missing)})")
    return coco


def open_export(root: Path) -> Export:
    """Open an export folder; every split found must parse."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: export folder not found")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    split_dirs = sorted(p.parent for p in root.glob(f"*/{ANNOTATION_FILE}"))
    if not split_dirs:
        raise InputError(f"{root}: no '<split>/{ANNOTATION_FILE}' found; is this a Roboflow COCO export?")
    export = Export(root=root)
    for d in split_dirs:
        export.splits[d.name] = Split(name=d.name, dir=d, coco=read_coco(d / ANNOTATION_FILE))
    return export


def missing_images(export: Export) -> list[str]:
    """Paths of images listed in an annotation file but absent on disk."""
    missing = []
    for split in export.splits.values():
        for img in split.images:
            name = img.get("file_name") if isinstance(img, dict) else None
            if not name or not (split.dir / name).is_file():
                missing.append(f"{split.dir / str(name)}")
    return missing
