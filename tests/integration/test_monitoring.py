"""Drift and quality over time: runs added to an Evidently workspace served by `evidently ui`, read
back through the UI's HTTP API (projects, runs, the dashboard's data series)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from drywall_core import field, monitoring
from tests.integration.prefect_server import free_port, http_ok_within

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
PROMPTS = ["segment crack", "segment taping area"]


@pytest.fixture
def evidently_ui(tmp_path: Path):
    port = free_port()
    log = open(tmp_path / "evidently.log", "w")  # noqa: SIM115 - lives as long as the service
    proc = subprocess.Popen(
        [str(BIN / "evidently"), "ui", "--workspace", str(tmp_path / "ws"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    if not http_ok_within(f"{url}/api/version", 120):
        raise RuntimeError((tmp_path / "evidently.log").read_text())
    yield url
    proc.terminate()
    proc.wait(20)


def _photos(export: Path, dest: Path, start: int, n: int = 6) -> Path:
    dest.mkdir(parents=True)
    for p in sorted((export / "valid").glob("*.jpg"))[start : start + n]:
        shutil.copyfile(p, dest / p.name)
    return dest


def _series(url: str, project: str, metric: str, labels: dict, tag: str) -> list[float]:
    body = {"series_filter": [{"metric": metric, "metric_labels": labels, "tags": [tag], "metadata": {}}]}
    r = httpx.post(f"{url}/api/v2/snapshots/{project}/data_series_batch", json=body, timeout=30)
    r.raise_for_status()
    (series,) = r.json()["series"]
    return series["values"]


def test_runs_over_time_in_the_evidently_ui(
    cli, evidently_ui: str, cracks_export: Path, drywall_export: Path, tmp_path: Path
) -> None:
    reference = _photos(cracks_export, tmp_path / "reference", 0)
    shares = []
    for i, current in enumerate(
        [_photos(cracks_export, tmp_path / "day1", 6), _photos(drywall_export, tmp_path / "day2", 0)]
    ):
        out = tmp_path / f"drift{i}"
        r = cli("drift", "--reference", reference, "--current", current, "--out", out, "--workspace", evidently_ui)
        assert r.code in (0, 1) and "added to Evidently workspace" in r.err, r.err
        shares.append(pd.read_json(out / "drift.json", typ="series")["drifted_share"])

    summary = pd.DataFrame(
        [
            {"sha256": f"s{i}", "prompt": p, "fg_fraction": 0.1 * i, "mean_confidence": 0.9, "uncertain_share": 0.05}
            for i in range(4)
            for p in PROMPTS
        ],
    )
    assert set(field.COLUMNS) >= set(summary.columns)
    monitoring.record_field(evidently_ui, "clipseg-drywall", PROMPTS, summary, {"model_version": "v1"})
    metrics = {
        "datasets": {"cracks": {"prompt": "segment crack"}, "drywall-join": {"prompt": "segment taping area"}},
        "per_image": [
            {"dataset": "cracks", "iou": 0.5, "dice": 0.6},
            {"dataset": "cracks", "iou": 0.7, "dice": 0.8},
            {"dataset": "drywall-join", "iou": 0.3, "dice": 0.4},
        ],
    }
    monitoring.record_evaluation(evidently_ui, "clipseg-drywall", PROMPTS, metrics, {"model_version": "v1"})

    # read everything back through the UI's HTTP API
    (project,) = [
        p for p in httpx.get(f"{evidently_ui}/api/projects", timeout=30).json() if p["name"] == "clipseg-drywall"
    ]
    runs = httpx.get(f"{evidently_ui}/api/projects/{project['id']}/snapshots", timeout=30).json()
    assert len(runs) == 4
    drifted = _series(
        evidently_ui, project["id"], "evidently:metric_v2:DriftedColumnsCount", {"value_type": "share"}, "drift"
    )
    assert drifted == pytest.approx(shares), "the drifted share of each drift run, in order"
    brightness = _series(
        evidently_ui, project["id"], "evidently:metric_v2:MeanValue", {"column": "brightness_mean"}, "drift"
    )
    assert len(brightness) == 2 and all(0 < b < 1 for b in brightness)
    fg = _series(
        evidently_ui,
        project["id"],
        "evidently:metric_v2:MeanValue",
        {"column": "fg_fraction__segment_crack"},
        "field-predictions",
    )
    assert fg == pytest.approx([0.15])
    miou = _series(
        evidently_ui, project["id"], "evidently:metric_v2:MeanValue", {"column": "iou__segment_crack"}, "evaluation"
    )
    assert miou == pytest.approx([0.6])
    dashboard = httpx.get(f"{evidently_ui}/api/v2/dashboards/{project['id']}", timeout=30).json()
    titles = (
        {p["title"] for p in dashboard["panels"].values()}
        if isinstance(dashboard["panels"], dict)
        else {p["title"] for p in dashboard["panels"]}
    )
    assert {
        "Share of drifted features",
        "Predicted foreground fraction per prompt",
        "Champion mIoU per prompt",
    } <= titles


def test_concurrent_first_runs_make_one_project_in_a_local_workspace(tmp_path: Path, monkeypatch) -> None:
    """Stages on one host that record their first run at the same moment share one project (a slow
    project creation widens the window between looking the project up and creating it)."""
    import threading
    import time

    from evidently.ui.workspace import Workspace

    create = Workspace.create_project

    def slow_create(self, *args, **kwargs):
        time.sleep(0.5)
        return create(self, *args, **kwargs)

    monkeypatch.setattr(Workspace, "create_project", slow_create)
    where = str(tmp_path / "ws")
    barrier = threading.Barrier(4)
    metrics = {
        "datasets": {"cracks": {"prompt": "segment crack"}},
        "per_image": [{"dataset": "cracks", "iou": 0.5, "dice": 0.6}, {"dataset": "cracks", "iou": 0.7, "dice": 0.8}],
    }
    errors: list[BaseException] = []

    def record(i: int) -> None:
        try:
            barrier.wait()
            monitoring.record_evaluation(where, "drywall-clipseg", PROMPTS, metrics, {"run": str(i)})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=record, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    ws = monitoring.open_workspace(where)
    projects = [p for p in ws.list_projects() if p.name == "drywall-clipseg"]
    assert len(projects) == 1, f"{len(projects)} projects of one name"
    assert len(ws.list_runs(projects[0].id)) == 4
