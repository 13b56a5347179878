"""Fan-out stages on a local Dask cluster through prefect-dask's task runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drywall_core.data.exports import open_export
from drywall_core.data.masks import render_masks
from drywall_core.field.drift import extract_features, find_images

pytestmark = pytest.mark.integration


@pytest.fixture
def dask_settings(monkeypatch):
    from drywall_core.base.config import get_settings

    monkeypatch.setenv("DRYWALL_TASK_RUNNER", "dask")
    monkeypatch.setenv("DRYWALL_DASK_WORKERS", "2")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_masks_and_drift_features_on_dask(prefect_api, dask_settings, drywall_export: Path, tmp_path: Path) -> None:
    from prefect_dask import DaskTaskRunner

    from flows.fanout import drift_features_flow, fanout_runner, render_masks_flow, run_fanout

    assert isinstance(fanout_runner(), DaskTaskRunner)
    out = run_fanout(render_masks_flow, export=str(drywall_export), out=str(tmp_path / "dask"), chunk=100)
    assert out["rendered"] == 920
    assert os.getpid() not in out["pids"], "chunks ran in Dask worker processes"
    render_masks(open_export(drywall_export), tmp_path / "local", workers=1, progress=False)
    for split in ("train", "valid"):
        names = sorted(p.name for p in (tmp_path / "local" / split).glob("*.png"))
        assert names == sorted(p.name for p in (tmp_path / "dask" / split).glob("*.png"))
        for n in names[::50]:
            a = np.asarray(Image.open(tmp_path / "local" / split / n))
            assert np.array_equal(a, np.asarray(Image.open(tmp_path / "dask" / split / n)))
    again = run_fanout(render_masks_flow, export=str(drywall_export), out=str(tmp_path / "dask"))
    assert again["rendered"] == 0 and again["skipped"] == 920, "incremental on Dask too"

    feats = run_fanout(drift_features_flow, folder=str(drywall_export / "valid"), out=str(tmp_path / "f.parquet"))
    import pandas as pd

    dask_frame = pd.read_parquet(feats["features"]).sort_values("path").reset_index(drop=True)
    local = extract_features(find_images(drywall_export / "valid"), workers=1, progress=False).frame
    pd.testing.assert_frame_equal(dask_frame, local.sort_values("path").reset_index(drop=True))
    assert os.getpid() not in feats["pids"]


def test_activation_cache_encoding_on_dask(
    prefect_api, dask_settings, tiny_model_dir: Path, synthetic_exports: list[Path], tmp_path: Path
) -> None:
    import torch

    from drywall_core.base.config import get_settings
    from drywall_core.base.storage import store_from_settings
    from drywall_core.data.snapshots import load_snapshots
    from drywall_core.model.cache import ActivationCache, cache_items
    from drywall_core.model.load import load_model
    from drywall_core.stages.context import Context
    from drywall_core.stages.data import ingest as stage_ingest
    from flows.fanout import activation_cache_flow, run_fanout

    settings = get_settings()
    store = store_from_settings(settings)
    refs = [stage_ingest(Context(settings, artifacts=store), e)["ref"] for e in synthetic_exports]
    cfg = settings.train.model_dump()
    out = run_fanout(activation_cache_flow, snapshots=refs, base_model=str(tiny_model_dir), train_config=cfg, chunk=24)
    samples, _ = load_snapshots(store, refs, settings.home)
    items = cache_items(samples, settings.train.flip)
    assert out["encoded"] == len({i.key for i in items}) and out["cached"] == len(items) - out["encoded"]
    assert os.getpid() not in out["pids"] and len(out["pids"]) >= 1
    again = run_fanout(activation_cache_flow, snapshots=refs, base_model=str(tiny_model_dir), train_config=cfg)
    assert again["encoded"] == 0, "the index the flow wrote is complete"

    loaded = load_model(tiny_model_dir)
    keys = [i.key for i in items]
    dask_cache = ActivationCache(settings.cache_root, loaded, settings.train.cache_dtype)
    local = ActivationCache(tmp_path / "local", loaded, settings.train.cache_dtype)
    local.build(items, progress=False)
    assert torch.allclose(dask_cache.get(keys), local.get(keys), rtol=1e-3, atol=1e-3)
