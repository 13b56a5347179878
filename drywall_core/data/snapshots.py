"""Dataset snapshots: the hand-off between ingest and every stage after it.

A snapshot is one validated, rendered and split dataset, stored in the artifact store as
``datasets/<name>/<snapshot id>/`` (``manifest.json``, ``images/<sha256><ext>``,
``masks/<sha256>.png``). Its id is the sha256 of everything the manifest asserts (spec, lineage,
validation, split, every image entry) but when and from which folder it was recorded -- so the same
Roboflow version ingested twice gives the same id, any changed pixel, annotation, prompt or split
assignment another, and a manifest edited in place is refused because it no longer matches its id.

Downstream stages take ``<name>/<snapshot id>`` references, never host paths: each host fetches
the files it lacks into its own content-addressed cache (``$DRYWALL_HOME/blobs``) and reads masks
and sides from the manifest -- nothing is re-rendered or re-split after ingest. A retrain whose
snapshots, base model and training config all equal those its champion was trained on has nothing
new to learn.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from drywall_core.base.errors import CheckFailed, InputError
from drywall_core.base.fsutil import sha256_file
from drywall_core.base.storage import ArtifactStore, Conflict
from drywall_core.data.datasets import DatasetSpec
from drywall_core.data.exports import LINEAGE_FILE, Export
from drywall_core.data.samples import Sample
from drywall_core.data.slice_keys import export_slices, from_record
from drywall_core.data.splits import SplitPlan

log = logging.getLogger(__name__)
PREFIX = "datasets"
MANIFEST = "manifest.json"
FORMAT = 1


def snapshot_ids(samples: Sequence[Sample]) -> dict[str, str]:
    """Dataset name -> snapshot id of its samples."""
    entries: dict[str, list[dict[str, str]]] = {}
    for s in samples:
        entry = {"sha256": sha256_file(s.image), "mask_sha256": sha256_file(s.mask), "side": s.side}
        entries.setdefault(s.dataset, []).append(entry)
    return {name: content_id(rows) for name, rows in entries.items()}


def training_identity(snapshots: dict[str, str], base_fingerprint: str, train_config: dict[str, Any]) -> dict:
    """What a model was trained from; recorded in every published version's manifest."""
    return {
        "snapshots": dict(sorted(snapshots.items())),
        "base_fingerprint": base_fingerprint,
        "train_config": train_config,
    }


def nothing_new(candidate: dict[str, Any], champion_manifest: dict[str, Any] | None) -> list[str]:
    """Empty if the champion was trained from exactly ``candidate``; else what differs (for the log)."""
    if not champion_manifest:
        return ["no champion"]
    recorded = champion_manifest.get("trained_from")
    if not recorded:
        return ["the champion does not record what it was trained from"]
    return [
        f"{key} differs"
        for key in ("snapshots", "base_fingerprint", "train_config")
        if recorded.get(key) != candidate.get(key)
    ]


# ---------------------------------------------------------------------------------------------
# Snapshots in the artifact store


def content_id(entries: Iterable[dict[str, Any]]) -> str:
    """The content of a set of image entries: sha256 over the sorted "image mask side" lines."""
    rows = sorted(f"{e['sha256']} {e['mask_sha256']} {e['side']}" for e in entries)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


VOLATILE_LINEAGE = frozenset({"recorded_at", "path"})  # when, and from which folder of which host


def snapshot_id(manifest: dict[str, Any]) -> str:
    """The id of a snapshot: sha256 over everything its manifest asserts -- the dataset spec (prompt,
    label strength), lineage, validation summary, split and every image entry (file, sha256,
    extension, mask, side, source photo) -- except when and from which local folder it was recorded,
    so the same Roboflow version ingested twice has one id and a manifest edited in place none."""
    asserted = {k: v for k, v in manifest.items() if k not in ("snapshot", "images")}
    if isinstance(asserted.get("lineage"), dict):
        asserted["lineage"] = {k: v for k, v in asserted["lineage"].items() if k not in VOLATILE_LINEAGE}
    images = sorted((manifest.get("images") or []), key=lambda e: json.dumps(e, sort_keys=True))
    canonical = json.dumps({"asserted": asserted, "images": images}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def ref_of(dataset: str, sid: str) -> str:
    return f"{dataset}/{sid}"


DATASET_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
SHA256 = re.compile(r"[0-9a-f]{64}")
IMAGE_EXT = re.compile(r"\.[a-z0-9]{1,8}")


def parse_ref(ref: str) -> tuple[str, str]:
    """``<dataset>/<snapshot id>`` -> (dataset, id); anything else is refused by name."""
    name, _, sid = str(ref).partition("/")
    if not DATASET_NAME.fullmatch(name) or not SHA256.fullmatch(sid):
        shown = str(ref)[:120].encode("unicode_escape").decode()
        raise InputError(f"'{shown}': a snapshot reference is <dataset name>/<64 hex digit snapshot id>")
    return name, sid


def check_entry(entry: Any, where: str) -> dict[str, Any]:
    """One image entry of a snapshot manifest, before a path or key is built from it."""
    if not isinstance(entry, dict):
        raise CheckFailed(f"{where}: an image entry is not an object")
    for field in ("sha256", "mask_sha256"):
        if not isinstance(entry.get(field), str) or not SHA256.fullmatch(entry[field]):
            raise CheckFailed(f"{where}: image entry {field} {str(entry.get(field))[:80]!r} is not a sha256")
    if not isinstance(entry.get("ext"), str) or not IMAGE_EXT.fullmatch(entry["ext"]):
        raise CheckFailed(f"{where}: image entry ext {str(entry.get('ext'))[:80]!r} is not a file extension")
    if entry.get("side") not in ("train", "val"):
        raise CheckFailed(f"{where}: image entry side {str(entry.get('side'))[:40]!r} is not train or val")
    return entry


def snapshot_key(ref: str, name: str = MANIFEST) -> str:
    dataset, sid = parse_ref(ref)
    return f"{PREFIX}/{dataset}/{sid}/{name}"


def build_manifest(
    export: Export,
    spec: DatasetSpec,
    masks_dir: Path,
    plan: SplitPlan,
    validation: dict[str, Any] | None = None,
    site_pattern: re.Pattern[str] | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """The manifest of one rendered, split export, and the local file behind every blob it names.
    An image whose dataset carries slice metadata (site, camera, week) records it as ``slices``."""
    files: dict[str, Path] = {}
    entries = []
    slices = export_slices(export, site_pattern)
    for side, items in (("train", plan.train), ("val", plan.val)):
        for it in items:
            image = export.splits[it.export_split].dir / it.file_name
            mask = masks_dir / it.export_split / f"{Path(it.file_name).stem}.png"
            if not mask.is_file():
                raise InputError(f"{mask}: mask missing for {image} (render masks before the snapshot)")
            img_sha, mask_sha = sha256_file(image), sha256_file(mask)
            ext = Path(it.file_name).suffix.lower() or ".img"
            files[f"images/{img_sha}{ext}"] = image
            files[f"masks/{mask_sha}.png"] = mask
            entries.append(
                {
                    "file": f"{it.export_split}/{it.file_name}",
                    "sha256": img_sha,
                    "ext": ext,
                    "mask_sha256": mask_sha,
                    "side": side,
                    "source": it.source,
                }
            )
            if (keys := slices.get((it.export_split, it.file_name))) is not None:
                entries[-1]["slices"] = dict(vars(keys))
    lineage_file = export.root / LINEAGE_FILE
    lineage = json.loads(lineage_file.read_text()) if lineage_file.is_file() else None
    manifest = {
        "format": FORMAT,
        "dataset": spec.name,
        "spec": spec.model_dump(mode="json"),
        "lineage": lineage,
        "validation": validation,
        "split": {
            "seed": plan.seed,
            "val_fraction": plan.val_fraction,
            **json.loads(plan.to_json())["counts"],
        },
        "images": sorted(entries, key=lambda e: e["file"]),
    }
    return {**manifest, "snapshot": snapshot_id(manifest)}, files


def publish_snapshot(
    store: ArtifactStore, manifest: dict[str, Any], files: dict[str, Path], progress: bool = False
) -> dict[str, Any]:
    """Upload the blobs the store lacks, then the manifest (last: a manifest means complete).

    Idempotent: the same content publishes to the same id, and a second publish uploads nothing.
    """
    ref = ref_of(manifest["dataset"], manifest["snapshot"])
    base = snapshot_key(ref, "")
    present = {k[len(base) :] for k in store.list(base)}
    todo = [(name, path) for name, path in sorted(files.items()) if name not in present]
    bar = tqdm(total=len(todo), desc=f"snapshot {ref[:24]}", unit="file", disable=None if progress else True)
    with bar, ThreadPoolExecutor(8) as pool:
        for _ in pool.map(lambda item: store.put_file(item[1], base + item[0]), todo):
            bar.update()
    if MANIFEST not in present:
        with contextlib.suppress(Conflict):  # someone published the same content meanwhile: the same snapshot
            store.create(base + MANIFEST, json.dumps(manifest, indent=1).encode())
    log.info("snapshot %s: %d files uploaded, %d already stored", ref, len(todo), len(files) - len(todo))
    return {
        "ref": ref,
        "dataset": manifest["dataset"],
        "snapshot": manifest["snapshot"],
        "uri": f"{store.url}/{base}".rstrip("/"),
        "uploaded_files": len(todo),
        "counts": {k: manifest["split"][k] for k in ("train_images", "val_images", "train_sources", "val_sources")},
        "source": manifest.get("lineage"),
    }


def read_manifest(store: ArtifactStore, ref: str) -> dict[str, Any]:
    """A snapshot's manifest, checked against its id (a manifest edited in place is refused)."""
    key = snapshot_key(ref)
    try:
        manifest = json.loads(store.get_bytes(key))
    except json.JSONDecodeError as exc:
        raise CheckFailed(f"{store.url}/{key}: not a snapshot manifest ({exc.msg})") from None
    images = manifest.get("images") if isinstance(manifest, dict) else None
    if not isinstance(images, list):
        raise CheckFailed(f"{store.url}/{key}: not a snapshot manifest (no image list)")
    for entry in images:
        check_entry(entry, f"{store.url}/{key}")
    if snapshot_id(manifest) != parse_ref(ref)[1] or manifest.get("snapshot") != parse_ref(ref)[1]:
        raise CheckFailed(f"{store.url}/{key}: content does not match snapshot id {parse_ref(ref)[1][:16]}")
    return manifest


def _verified_blob(path: Path, sha: str) -> bool:
    """A blob this host holds is used only if its bytes still match its name; else it is fetched again."""
    if not path.is_file():
        return False
    if sha256_file(path) == sha:
        return True
    log.warning("%s: bytes do not match its sha256 (corrupted on this host); fetching it again", path)
    path.unlink(missing_ok=True)
    return False


def blob_path(home: Path, sha: str, ext: str) -> Path:
    """Where a host keeps a fetched file: content-addressed, shared by every snapshot it holds."""
    return Path(home) / "blobs" / sha[:2] / f"{sha}{ext}"


def fetch_snapshot(
    store: ArtifactStore,
    ref: str,
    home: Path,
    sides: Sequence[str] = ("train", "val"),
    progress: bool = False,
) -> tuple[list[Sample], DatasetSpec, dict[str, int]]:
    """Samples of one snapshot, fetching only the files this host lacks (each verified by sha256)."""
    manifest = read_manifest(store, ref)
    base = snapshot_key(ref, "")
    spec = DatasetSpec.model_validate(manifest["spec"])
    wanted = [e for e in manifest["images"] if e["side"] in sides]
    jobs: dict[Path, tuple[str, str]] = {}
    distinct: set[Path] = set()
    samples = []
    for e in wanted:
        image, mask = blob_path(home, e["sha256"], e["ext"]), blob_path(home, e["mask_sha256"], ".png")
        for path, key, sha in (
            (image, f"images/{e['sha256']}{e['ext']}", e["sha256"]),
            (mask, f"masks/{e['mask_sha256']}.png", e["mask_sha256"]),
        ):
            if path not in distinct and not _verified_blob(path, sha):
                jobs[path] = (base + key, sha)
            distinct.add(path)
        samples.append(
            Sample(image, mask, spec.name, e["side"], e["source"], e["sha256"], from_record(e.get("slices")))
        )
    bar = tqdm(total=len(jobs), desc=f"fetch {ref[:24]}", unit="file", disable=None if progress else True)
    with bar, ThreadPoolExecutor(8) as pool:
        for _ in pool.map(lambda job: store.get_file(job[1][0], job[0], sha256=job[1][1]), jobs.items()):
            bar.update()
    stats = {"fetched": len(jobs), "local": len(distinct) - len(jobs)}
    log.info("snapshot %s: %d files fetched, %d already on this host", ref, stats["fetched"], stats["local"])
    return samples, spec, stats


def load_snapshots(
    store: ArtifactStore,
    refs: Sequence[str],
    home: Path,
    sides: Sequence[str] = ("train", "val"),
    progress: bool = False,
) -> tuple[list[Sample], dict[str, DatasetSpec]]:
    """Samples and dataset specs of several snapshots: the one load a stage does per run."""
    samples: list[Sample] = []
    specs: dict[str, DatasetSpec] = {}
    for ref in refs:
        got, spec, _ = fetch_snapshot(store, ref, home, sides, progress)
        if spec.name in specs:
            raise InputError(f"two snapshots of dataset '{spec.name}' in one run: {', '.join(refs)}")
        samples += got
        specs[spec.name] = spec
    return samples, specs


def snapshots_of(refs: Sequence[str]) -> dict[str, str]:
    """Dataset name -> snapshot id, from references (what ``trained_from`` records)."""
    return dict(parse_ref(r) for r in refs)
