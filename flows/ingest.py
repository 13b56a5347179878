"""Ingest: pull (latest registered Roboflow versions, or given sources) -> validate -> render masks
-> split -> dataset snapshot in the artifact store.

Every export is validated before anything is rendered: one failure fails the flow with its report
linked in the UI, and nothing downstream runs. The flow returns snapshot references
(``<dataset>/<snapshot id>``), never a path of this host: the stages after it fetch what they need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from drywall_core.base.config import get_settings
from drywall_core.base.markup import md
from drywall_core.data.samples import masks_dir_for
from flows.common import Source, data_dir, run_dir
from flows.fanout import render_masks_flow, run_fanout, use_dask
from tasks.artifacts import markdown
from tasks.data import (
    latest_versions_task,
    local_task,
    masks_task,
    pull_task,
    snapshot_task,
    synthetic_task,
    validate_task,
)


def _fetch(source: Source) -> list[tuple[str, str | None]]:
    """Export folders of a source, each with its dataset name (None: guessed from the export)."""
    out = data_dir() / source.slug()
    if source.kind == "synthetic":
        return [(path, name) for name, path in synthetic_task(str(out), source.seed).items()]
    if source.kind == "local":
        return [(local_task(str(source.path), str(out)), source.dataset)]
    if not (source.workspace and source.project and source.version):
        raise ValueError("a roboflow source needs workspace, project and version")
    return [(pull_task(source.workspace, source.project, source.version, str(out)), source.dataset)]


def latest_sources() -> list[Source]:
    """The newest Roboflow version of every dataset in the registry (``datasets.yaml``)."""
    return [Source(kind="roboflow", **found) for found in latest_versions_task()]


@flow(name="ingest", log_prints=True)
def ingest(sources: list[Source] | None = None) -> list[dict[str, Any]]:
    """Returns one record per export: dataset, snapshot reference and id, store URI, split counts.

    With no sources: the latest Roboflow version of every registered dataset, pulled only if this
    host does not hold it yet.
    """
    sources = sources or latest_sources()
    exports = [e for src in sources for e in _fetch(src)]
    reports = run_dir("ingest")
    validated = [validate_task(path, str(reports), dataset) for path, dataset in exports]
    settings = get_settings()
    records = []
    for v in validated:
        masks_dir = str(masks_dir_for(settings, Path(v["export"])))
        if use_dask():  # fan the rendering out over the Dask cluster
            run_fanout(render_masks_flow, export=v["export"], out=masks_dir)
            masks = masks_dir
        else:
            masks = masks_task(v["export"], masks_dir)
        snap = snapshot_task(v["export"], v["dataset"], masks, v["validation"])
        records.append({**snap, "report": v["report"], "validation": v["validation"]})
    rows = "\n".join(
        f"| {md(r['dataset'])} | `{r['snapshot'][:16]}` | {r['counts']['train_images']} | {r['counts']['val_images']} "
        f"| {r['counts']['train_sources']} / {r['counts']['val_sources']} | {r['uploaded_files']} |"
        for r in records
    )
    markdown(
        "| dataset | snapshot | train images | val images | sources train/val | files uploaded |\n"
        "|---|---|---|---|---|---|\n" + rows,
        "ingest-summary",
        "dataset snapshots: validated exports and their leakage-free splits",
    )
    return records
