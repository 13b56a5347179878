"""Drift and quality over time: runs added to an Evidently workspace served by `evidently ui`, read
back through the UI's HTTP API (projects, runs, the dashboard's data series)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from drywall_core.base.config import get_settings
from drywall_core.field import monitoring
from drywall_core.field import predictions as field
from tests.conftest import REPO
from tests.integration.prefect_server import free_port

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
PROMPTS = ["segment crack", "segment taping area"]


SECRET = "evidently-Secret-for-tests-1"
AUTH = {"evidently-secret": SECRET}


@pytest.fixture
def evidently_ui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The stack's Evidently service: the Evidently app behind the secret (deployments/evidently_ui.py)."""
    port = free_port()
    log = open(tmp_path / "evidently.log", "w")  # noqa: SIM115 - lives as long as the service
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployments.evidently_ui", "--workspace", str(tmp_path / "ws"), "--port", str(port)],
        env={**os.environ, "DRYWALL_EVIDENTLY_SECRET": SECRET},
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not _answers(f"{url}/api/version"):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError((tmp_path / "evidently.log").read_text())
        time.sleep(0.3)
    monkeypatch.setenv("DRYWALL_EVIDENTLY_SECRET", SECRET)  # what the stack writes into stack.env
    get_settings.cache_clear()
    yield url
    proc.terminate()
    proc.wait(20)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, headers=AUTH, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_service_refuses_every_request_without_the_secret(evidently_ui: str) -> None:
    for method, path in [("GET", "/api/projects"), ("GET", "/"), ("POST", "/api/projects"), ("GET", "/api/version")]:
        r = httpx.request(method, f"{evidently_ui}{path}", json={"name": "x"}, timeout=10)
        assert r.status_code == 401 and "basic" in r.headers["www-authenticate"].lower(), (method, path)
    wrong = httpx.get(f"{evidently_ui}/api/projects", headers={"evidently-secret": "nope"}, timeout=10)
    assert wrong.status_code == 401
    browser = httpx.get(f"{evidently_ui}/api/projects", auth=("anyone", SECRET), timeout=10)
    assert browser.status_code == 200, "a browser's basic auth with the secret as password is let in"
    assert httpx.get(f"{evidently_ui}/", auth=("anyone", SECRET), timeout=10).status_code == 200, "the UI page"


def _photos(export: Path, dest: Path, start: int, n: int = 6) -> Path:
    dest.mkdir(parents=True)
    for p in sorted((export / "valid").glob("*.jpg"))[start : start + n]:
        shutil.copyfile(p, dest / p.name)
    return dest


def _series(url: str, project: str, metric: str, labels: dict, tag: str) -> list[float]:
    body = {"series_filter": [{"metric": metric, "metric_labels": labels, "tags": [tag], "metadata": {}}]}
    r = httpx.post(f"{url}/api/v2/snapshots/{project}/data_series_batch", json=body, headers=AUTH, timeout=30)
    r.raise_for_status()
    found = r.json()["series"]
    assert len(found) <= 1, found
    return found[0]["values"] if found else []


def panels_of(dashboard: dict) -> list[dict]:
    return list(dashboard["panels"].values() if isinstance(dashboard["panels"], dict) else dashboard["panels"])


def test_runs_over_time_in_the_evidently_ui(
    cli, evidently_ui: str, cracks_export: Path, drywall_export: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    import json

    reference = _photos(cracks_export, tmp_path / "reference", 0, 16)
    shares, scores = [], []
    sites: dict[str, list[dict]] = {}
    monkeypatch.setenv("DRYWALL_SLICES__MIN_PHOTOS", "8")  # two sites of 8 photos each are tested
    days = [(cracks_export, 16), (drywall_export, 0)]
    for i, (export, start) in enumerate(days):
        current = tmp_path / f"day{i + 1}"
        _photos(export, current / "sites" / "north", start, 8)
        _photos(export, current / "sites" / "south", start + 8, 8)
        out = tmp_path / f"drift{i}"
        args = ("--reference", reference, "--current", current, "--out", out, "--model", tiny_model_dir)
        r = cli("drift", *args, "--workspace", evidently_ui)
        assert r.code in (0, 1) and "added to Evidently workspace" in r.err, r.err
        body = json.loads((out / "drift.json").read_text())
        shares.append(body["drifted_share"])
        scores.append(body["embeddings"]["score"])
        for sl in body["slices"]:
            if sl["key"] == "site":
                assert sl["tested"] and sl["n_current"] == 8, sl
                sites.setdefault(sl["value"], []).append(sl)

    summary = pd.DataFrame(
        [
            {
                "sha256": f"s{i}",
                "prompt": p,
                "fg_fraction": 0.1 * i,
                "mean_confidence": 0.9,
                "uncertain_share": 0.05,
                "n_cracks": float(i) if p == "segment crack" else float("nan"),
                "site": "north" if i < 3 else "east",
            }
            for i in range(4)
            for p in PROMPTS
        ],
    )
    assert set(field.COLUMNS) >= set(summary.columns)
    meta = {"model_version": "v1"}
    monitoring.record_field(evidently_ui, "clipseg-drywall", PROMPTS, summary, meta, min_photos=3)
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
    listed = httpx.get(f"{evidently_ui}/api/projects", headers=AUTH, timeout=30).json()
    (project,) = [p for p in listed if p["name"] == "clipseg-drywall"]
    runs = httpx.get(f"{evidently_ui}/api/projects/{project['id']}/snapshots", headers=AUTH, timeout=30).json()
    # 2 drift runs and their slices (2 sites tested each; camera and week: one 'unknown' slice of all 16,
    # not tested again) + field and its sites + eval
    assert len(runs) == 2 * 2 + 2 + 1
    mean = "evidently:metric_v2:MeanValue"
    north = _series(evidently_ui, project["id"], mean, {"column": "drifted_share__site__north"}, "drift-slices")
    south = _series(evidently_ui, project["id"], mean, {"column": "drifted_share__site__south"}, "drift-slices")
    assert north == pytest.approx([s["drifted_share"] for s in sites["north"]]), "as drift.json says, per run"
    assert south == pytest.approx([s["drifted_share"] for s in sites["south"]])
    assert south[1] > south[0], "the south site's photos of the other export drift more"
    conf = _series(evidently_ui, project["id"], mean, {"column": "mean_confidence__site__north"}, "field-slices")
    assert conf == pytest.approx([0.9])
    assert not _series(evidently_ui, project["id"], mean, {"column": "mean_confidence__site__east"}, "field-slices")
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
    cracks = _series(
        evidently_ui, project["id"], "evidently:metric_v2:MeanValue", {"column": "n_cracks__segment_crack"},
        "field-predictions",
    )  # fmt: skip
    assert cracks == pytest.approx([1.5]), "a crack prompt's measurements are plotted per run"
    emb = _series(
        evidently_ui, project["id"], "evidently:metric_v2:EmbeddingsDrift", {"embeddings_name": "image_embedding"},
        "drift",
    )  # fmt: skip
    assert emb == pytest.approx(scores), "the embedding drift score of each drift run, as drift.json says"
    miou = _series(
        evidently_ui, project["id"], "evidently:metric_v2:MeanValue", {"column": "iou__segment_crack"}, "evaluation"
    )
    assert miou == pytest.approx([0.6])
    dashboard = httpx.get(f"{evidently_ui}/api/v2/dashboards/{project['id']}", headers=AUTH, timeout=30).json()
    titles = (
        {p["title"] for p in dashboard["panels"].values()}
        if isinstance(dashboard["panels"], dict)
        else {p["title"] for p in dashboard["panels"]}
    )
    assert {
        "Share of drifted features",
        "Predicted foreground fraction per prompt",
        "Champion mIoU per prompt",
        "Image-embedding drift score (Evidently embeddings drift)",
        "Cracks per photo",
        "Drifted share of features by site",
        "Mean confidence by site (all prompts)",
    } <= titles
    by_site = next(p for p in panels_of(dashboard) if p["title"] == "Drifted share of features by site")
    assert sorted(v["legend"] for v in by_site["values"]) == ["north", "south"]
    panels = panels_of(dashboard)
    assert not [p["title"] for p in panels if p.get("description") == "half"], "a size passed as the subtitle"
    assert {p.get("size") for p in panels if p["title"] != "drywall-qa: field images and model quality over time"} == {
        "half"
    }
    for run in runs:  # every snapshot says which model version and run made it
        assert "model_version" in (run.get("metadata") or {}), run
    _dashboard_reads_right(evidently_ui, project["id"], tmp_path)


def _dashboard_reads_right(url: str, project_id: str, tmp_path: Path) -> None:
    """The dashboard in headless Chromium: every panel draws, and no tick or legend label is cut off
    by its plot's edge. The screenshot goes beside the test's files, and to docs/ with
    DRYWALL_UPDATE_DOCS=1."""
    from playwright.sync_api import sync_playwright

    from tests.integration.test_serve_page import FLAGS, _chromium

    shot = tmp_path / "evidently-dashboard.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=FLAGS)
        page = browser.new_page(
            viewport={"width": 1440, "height": 1000}, http_credentials={"username": "ops", "password": SECRET}
        )
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/projects/{project_id}")
        page.wait_for_selector("svg .MuiChartsAxis-root", timeout=60_000)  # the UI's charts (MUI X)
        page.wait_for_timeout(1500)  # the lines' appearing animation
        charts, cut = page.evaluate(
            """() => {
                 const svgs = [...document.querySelectorAll('svg')].filter(s => s.querySelector('.MuiChartsAxis-root'));
                 const cut = svgs.flatMap(svg => {
                   const box = svg.getBoundingClientRect();
                   return [...svg.querySelectorAll('text')].map(t => [t.textContent, t.getBoundingClientRect()])
                     .filter(([s, r]) => s && r.width > 0 && (r.left < box.left - 1 || r.right > box.right + 1 ||
                                                              r.top < box.top - 1 || r.bottom > box.bottom + 1))
                     .map(([s, r]) => s);
                 });
                 return [svgs.length, cut];
               }"""
        )
        titles = page.evaluate("() => document.body.innerText")
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert not errors, errors
    assert "Drifted share of features by site" in titles and "Cracks per photo" in titles
    assert charts >= 12, f"{charts} charts drawn"  # every line panel with data (crack length, live traffic: none)
    assert not cut, f"labels cut off by their plot's edge: {cut}"
    if os.environ.get("DRYWALL_UPDATE_DOCS") == "1":
        shutil.copy(shot, REPO / "docs" / "evidently-dashboard.png")


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
