"""Fan-out stages as subflows on a configurable task runner: Prefect's default, or Dask.

Mask rendering and drift feature extraction split into independent chunks; with
``DRYWALL_TASK_RUNNER=dask`` (a local cluster) or ``DRYWALL_DASK_ADDRESS`` (an existing one) the
chunks run on Dask workers through ``prefect-dask``'s task runner.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped

from drywall_core.base.config import TrainConfig, get_settings
from drywall_core.base.storage import store_from_settings
from drywall_core.data.exports import open_export
from drywall_core.data.masks import MaskJob, plan_masks, render_chunk
from drywall_core.data.snapshots import load_snapshots
from drywall_core.field import drift as d
from drywall_core.model.cache import ActivationCache, CacheItem, cache_items
from drywall_core.model.load import LoadedModel, load_model


def use_dask() -> bool:
    s = get_settings()
    return bool(s.dask_address) or s.task_runner == "dask"


def fanout_runner() -> Any:
    """The task runner the settings ask for."""
    s = get_settings()
    if not use_dask():
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner()
    from prefect_dask import DaskTaskRunner

    if s.dask_address:
        return DaskTaskRunner(address=s.dask_address)
    workers = s.dask_workers or os.cpu_count() or 1
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    )


@task
def render_masks_chunk_task(jobs: list[MaskJob]) -> dict[str, Any]:
    return {"outs": render_chunk(jobs), "pid": os.getpid()}


@flow(name="render-masks")
def render_masks_flow(export: str, out: str, chunk: int = 64) -> dict[str, Any]:
    """Render pending masks chunk by chunk; the manifest records every finished chunk, even on failure."""
    plan = plan_masks(open_export(Path(export)), Path(out))
    futures = render_masks_chunk_task.map(plan.chunks(chunk))
    pids, errors = set(), []
    for fut in futures:
        try:
            result = fut.result()
        except Exception as exc:  # noqa: BLE001 - keep the finished chunks, then fail
            errors.append(exc)
            continue
        plan.record(result["outs"])
        pids.add(result["pid"])
    stats = plan.save()
    if errors:
        raise errors[0]
    return {"rendered": stats.rendered, "skipped": stats.skipped, "removed": stats.removed, "pids": sorted(pids)}


@task
def features_chunk_task(paths: list[str], max_pixels: int) -> dict[str, Any]:
    return {"rows": d.features_chunk(paths, max_pixels), "pid": os.getpid()}


@flow(name="drift-features")
def drift_features_flow(folder: str, out: str, chunk: int = 64) -> dict[str, Any]:
    """Features of every image under ``folder`` -> ``out`` (parquet); returns the skipped files too."""
    names = [str(p) for p in d.find_images(Path(folder))]
    futures = features_chunk_task.map(
        [names[i : i + chunk] for i in range(0, len(names), chunk)], get_settings().max_image_pixels
    )
    results, pids = [], set()
    for fut in futures:
        part = fut.result()
        results += part["rows"]
        pids.add(part["pid"])
    table = d.table_from_results(results)
    d.save_profile(table.frame, Path(out))
    return {"features": out, "skipped": table.skipped, "pids": sorted(pids)}


@functools.lru_cache(maxsize=2)
def _model(ref: str) -> LoadedModel:
    """One copy of the frozen model per worker process, reused by every chunk it encodes."""
    return load_model(ref)


@task
def encode_shard_task(base_model: str, chunk: list[tuple[str, bool, str]], dtype: str) -> dict[str, Any]:
    cache = ActivationCache(get_settings().cache_root, _model(base_model), dtype)
    shard, keys, shape = cache.encode_shard([(CacheItem(Path(p), f), k) for p, f, k in chunk])
    return {"shard": shard, "keys": keys, "shape": shape, "pid": os.getpid()}


@flow(name="activation-cache")
def activation_cache_flow(
    snapshots: list[str], base_model: str, train_config: dict[str, Any], chunk: int = 16
) -> dict[str, Any]:
    """Encode the pending images of the snapshots in parallel chunks; this flow is the index's single writer."""
    s = get_settings()
    cfg = TrainConfig.model_validate(train_config)
    samples, _ = load_snapshots(store_from_settings(s), snapshots, s.home)
    items = cache_items(samples, cfg.flip)
    keys = [it.key for it in items]
    cache = ActivationCache(s.cache_root, _model(base_model), cfg.cache_dtype)
    todo = [(str(it.path), it.flip, k) for it, k in cache.pending(items, keys)]
    chunks = [todo[i : i + chunk] for i in range(0, len(todo), chunk)]
    futures = encode_shard_task.map(unmapped(base_model), chunks, unmapped(cfg.cache_dtype))
    pids = set()
    for fut in futures:
        r = fut.result()
        cache.register(r["shard"], r["keys"], r["shape"])
        pids.add(r["pid"])
    cache.flush()
    return {"encoded": len(todo), "cached": len(items) - len(todo), "pids": sorted(pids)}


def run_fanout(fn: Any, **kwargs: Any) -> Any:
    return fn.with_options(task_runner=fanout_runner())(**kwargs)
