"""Local-folder source: any Roboflow COCO export already on disk."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

from drywall_core.data.exports import LINEAGE_FILE, open_export, sha256_file
from drywall_core.data.sources.atomic import check_target, staged_dir


def lineage_for(root: Path, source: dict) -> dict:
    """Lineage record: where the export came from and a hash of each annotation file."""
    export = open_export(root)
    return {
        **source,
        "format": "coco",
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "annotation_sha256": {n: sha256_file(s.annotation_path) for n, s in export.splits.items()},
        "images": {n: len(s.images) for n, s in export.splits.items()},
    }


def write_lineage(root: Path, source: dict) -> dict:
    lineage = lineage_for(root, source)
    (root / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2))
    return lineage


def copy_local_export(src: Path, out: Path, overwrite: bool = False) -> dict:
    """Copy a local export into ``out`` (atomically) and record its lineage."""
    open_export(src)  # fail early, naming the file, on unreadable input
    check_target(out, overwrite)
    with staged_dir(out, "copy") as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        lineage = write_lineage(tmp, {"source": "local", "path": str(Path(src).resolve())})
    return lineage
