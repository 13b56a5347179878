"""The candidate: fit, evaluation, drift reference profile and artifact composed once
(:func:`fit_candidate`, which ``drywall train`` runs too), and the training stage as one operation --
snapshots in, a staged candidate out.

A training host gets dataset snapshot references and a staging id, never a path of another host:
it fetches what it lacks (snapshots, shared activation cache entries), trains, and writes the
candidate -- artifact, metrics, reports, drift reference profile -- to
``staging/<staging id>/`` in the artifact store. Each epoch's checkpoint goes there too, so a run
interrupted on one host resumes on another from the last finished epoch. ``candidate.json``
is written last: its presence means the candidate is complete.

The orchestrating host then fetches the candidate (:func:`fetch_candidate`) to gate and publish it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from drywall_core.base.config import TrainConfig
from drywall_core.base.errors import CheckFailed, InputError
from drywall_core.base.fsutil import check_segment, inside, sha256_file
from drywall_core.base.storage import ArtifactStore
from drywall_core.data.datasets import DatasetSpec
from drywall_core.data.samples import Sample
from drywall_core.data.snapshots import load_snapshots
from drywall_core.model.cache import ActivationCache, SharedCache, cache_items
from drywall_core.model.load import LoadedModel
from drywall_core.model.train import CHECKPOINT, TrainResult, train, write_artifact

log = logging.getLogger(__name__)
STAGING = "staging"
CANDIDATE = "candidate.json"
# what the orchestrating host needs of a staged candidate: the artifact and the reports it links
STAGED_FILES = (
    "eval/metrics.json",
    "eval/metrics.md",
    "eval/best_worst.png",
    "training_curve.png",
    "train_summary.json",
)


def staging_key(staging: str, name: str = "") -> str:
    if not staging or "/" in staging or staging.startswith("."):
        raise InputError(f"'{staging}': a staging id is one path segment (e.g. the flow run id)")
    return f"{STAGING}/{staging}/{name}"


def train_candidate(
    store: ArtifactStore,
    snapshots: Sequence[str],
    loaded: LoadedModel,
    cfg: TrainConfig,
    staging: str,
    work: Path,
    home: Path,
    cache_root: Path,
    progress: bool = False,
    on_epoch_end: Callable[[dict], None] | None = None,
    on_cache: Callable[[int, int], None] | None = None,
    embedding_precision: str | None = "int8",
) -> dict[str, Any]:
    """Train on ``snapshots`` and stage the candidate; resumes from a checkpoint already staged."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    samples, specs = load_snapshots(store, snapshots, home, progress=progress)
    cache = ActivationCache(cache_root, loaded, cfg.cache_dtype)
    items = cache_items(samples, cfg.flip)
    cache_stats = SharedCache(cache, store).build(items, cfg.cache_batch_size, progress, on_cache=on_cache)
    log.info("activation cache: %(encoded)d encoded, %(downloaded)d downloaded, %(uploaded)d uploaded", cache_stats)

    ckpt_key = staging_key(staging, CHECKPOINT)
    resumed = store.exists(ckpt_key)
    if resumed:  # another attempt (maybe on another host) got this far: go on from there
        store.get_file(ckpt_key, work / CHECKPOINT)
        log.info("resuming from %s/%s", store.url, ckpt_key)

    def epoch_end(row: dict) -> None:
        store.put_file(work / CHECKPOINT, ckpt_key)
        if on_epoch_end is not None:
            on_epoch_end(row)

    result, paths = fit_candidate(
        loaded,
        samples,
        specs,
        cfg,
        work,
        cache_root,
        resume=resumed,
        progress=progress,
        on_epoch_end=epoch_end,
        on_cache=on_cache,
        embedding_precision=embedding_precision,
    )
    model_dir = Path(paths["artifact"])
    for f in sorted(model_dir.iterdir()):
        if f.is_file():
            store.put_file(f, staging_key(staging, f"model/{f.name}"))
    for name in STAGED_FILES:
        if (work / name).is_file():
            store.put_file(work / name, staging_key(staging, name))
    candidate = {
        "staging": staging,
        "uri": f"{store.url}/{staging_key(staging)}".rstrip("/"),
        "snapshots": list(snapshots),
        "model_files": sorted(f.name for f in model_dir.iterdir() if f.is_file()),
        "model_sha256": {f.name: sha256_file(f) for f in sorted(model_dir.iterdir()) if f.is_file()},
        "overall": paths["overall"],
        "summary": {**result.summary, "cache": {**result.summary["cache"], **cache_stats}},
        "resumed": resumed,
    }
    store.put_bytes(staging_key(staging, CANDIDATE), json.dumps(candidate, indent=2, default=str).encode())
    return candidate


def package_candidate(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    specs: dict[str, DatasetSpec],
    result: TrainResult,
    out_dir: Path,
    progress: bool = True,
    embedding_precision: str | None = "int8",
) -> dict[str, Any]:
    """After training: evaluate on the held-out sources, write the reports, the drift reference
    profile (features, model signals and image embeddings of the training images, the embeddings
    at the precision prediction runs: ``embedding_precision``) and the artifact."""
    from drywall_core.field.drift import PROFILE_FILE, write_reference_profile
    from drywall_core.model.evaluate import evaluate, write_reports

    out_dir = Path(out_dir)
    val = [x for x in samples if x.side == "val"]
    metrics = evaluate(loaded, val, specs, progress=progress)
    metrics["model"]["fine_tuned"] = True  # the base's weights, but this run's decoder
    reports = write_reports(loaded, val, specs, metrics, out_dir / "eval")
    write_reference_profile(  # with the model's own signals: drift compares them on field photos
        [x.image for x in samples if x.side == "train"], out_dir / "model" / PROFILE_FILE, progress=progress,
        model=loaded, prompts=[spec.prompt for spec in specs.values()], embedding_precision=embedding_precision,
    )  # fmt: skip
    write_artifact(loaded, out_dir / "model", result.summary, metrics)
    return {
        "artifact": str(out_dir / "model"),
        "metrics": str(reports["metrics"]),
        "table": str(reports["table"]),
        "grid": str(reports["grid"]),
        "curve": str(out_dir / "training_curve.png"),
        "summary": result.summary,
        "overall": metrics["overall"],
    }


def canonical_order(samples: Sequence[Sample]) -> list[Sample]:
    """Samples sorted by what they are, not where they lie (a snapshot names its files by sha256)."""
    from dataclasses import replace

    hashed = [x if x.sha256 else replace(x, sha256=sha256_file(x.image)) for x in samples]
    return sorted(hashed, key=lambda x: (x.dataset, x.side, x.sha256, x.source))


def fit_candidate(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    specs: dict[str, DatasetSpec],
    cfg: TrainConfig,
    out_dir: Path,
    cache_root: Path,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
    on_cache: Callable[[int, int], None] | None = None,
    embedding_precision: str | None = "int8",
) -> tuple[TrainResult, dict[str, Any]]:
    """Fit, evaluate and write the candidate artifact: the one composition both training routes
    (``drywall train`` and the train flow) run. Returns the training result and the paths/metrics.

    The samples are put in one order of their content first (dataset, side, image sha256): the
    seeded shuffle then draws the same batches whether the images came from an export folder or a
    snapshot, so both routes train the same candidate from the same data."""
    samples = canonical_order(samples)
    result = train(loaded, samples, specs, cfg, out_dir, cache_root, resume, progress, on_epoch_end, on_cache)
    return result, package_candidate(loaded, samples, specs, result, out_dir, progress, embedding_precision)


def candidate_staged(store: ArtifactStore, staging: str) -> bool:
    """Whether a finished candidate is staged there (``candidate.json`` is written last)."""
    return store.exists(staging_key(staging, CANDIDATE))


def fetch_candidate(store: ArtifactStore, staging: str, dest: Path) -> dict[str, Any]:
    """Download a staged candidate (model and reports) to ``dest``; returns the local paths."""
    dest = Path(dest)
    key = staging_key(staging, CANDIDATE)
    candidate = json.loads(store.get_bytes(key))
    digests = candidate.get("model_sha256")
    if not isinstance(digests, dict) or sorted(digests) != sorted(candidate.get("model_files", [])):
        raise CheckFailed(f"{store.url}/{key}: no sha256 for every model file; not a candidate this code staged")
    for name, digest in digests.items():
        target = inside(dest / "model", check_segment(name, f"model file of {store.url}/{key}"), "model file")
        store.get_file(staging_key(staging, f"model/{name}"), target, sha256=str(digest))
    for name in STAGED_FILES:
        if store.exists(staging_key(staging, name)):
            store.get_file(staging_key(staging, name), dest / name)
    return {
        **candidate,
        "artifact": str(dest / "model"),
        "metrics": str(dest / "eval" / "metrics.json"),
        "links": {name: store.link(staging_key(staging, name)) for name in STAGED_FILES},
    }
