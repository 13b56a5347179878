"""Drift and quality over time: every run is a snapshot in an Evidently workspace project.

One project per model name, with a dashboard: the share of drifted features and the main image
features per drift run, the per-prompt model signals of field predictions (foreground fraction,
confidence, uncertainty), and the champion's per-prompt mIoU / Dice from the nightly evaluation.

The workspace is a folder (``$DRYWALL_HOME/evidently`` or ``DRYWALL_EVIDENTLY_WORKSPACE``), or the
URL of an ``evidently ui`` service (``DRYWALL_EVIDENTLY_URL``, how the local stack runs it): hosts
that share nothing but the network all add their runs to the one service.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from drywall_core.base.config import get_settings
from drywall_core.field.drift import MAIN_FEATURES
from drywall_core.field.embedding_drift import EMBEDDINGS_NAME

SIGNALS = ("fg_fraction", "mean_confidence", "uncertain_share")
MEASURES = ("n_cracks", "total_length_px")  # crack prompts' measurements, per photo
TAG_DRIFT, TAG_FIELD, TAG_EVAL, TAG_SHADOW = "drift", "field-predictions", "evaluation", "live-shadow"


def slug(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")


def open_workspace(where: str, secret: str | None = None) -> Any:
    """A local workspace folder (created if missing) or a remote ``evidently ui`` at an http(s) URL.

    A remote one is given ``secret`` (default: ``DRYWALL_EVIDENTLY_SECRET``), which the stack's
    service demands on every request.
    """
    if _is_url(where):
        from evidently.ui.workspace import RemoteWorkspace

        if secret is None:
            configured = get_settings().evidently_secret
            secret = configured.get_secret_value() if configured else None
        return RemoteWorkspace(where.rstrip("/"), secret=secret)
    from evidently.ui.workspace import Workspace

    return Workspace.create(where)


def _panels(prompts: Sequence[str]) -> list[Any]:
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import counter_panel, line_plot_panel, text_panel

    def mean(column: str, legend: str, tag: str) -> PanelMetric:
        return PanelMetric(legend=legend, metric="MeanValue", metric_labels={"column": column}, tags=[tag])

    drifted = PanelMetric(
        legend="drifted share", metric="DriftedColumnsCount", metric_labels={"value_type": "share"}, tags=[TAG_DRIFT]
    )
    panels = [
        text_panel("drywall-qa: field images and model quality over time"),
        counter_panel("Share of drifted features (latest run)", [drifted], size="half", aggregation="last"),
        line_plot_panel("Share of drifted features", [drifted], size="half"),
        line_plot_panel(
            "Image features (mean of each drift run)",
            [mean(c, c, TAG_DRIFT) for c in MAIN_FEATURES if c != "sharpness_laplacian_var"],
            size="half",
        ),
        line_plot_panel(
            "Sharpness (variance of the Laplacian)",
            [mean("sharpness_laplacian_var", "sharpness", TAG_DRIFT)],
            size="half",
        ),
        line_plot_panel(
            "Image-embedding drift score (Evidently embeddings drift)",
            [
                PanelMetric(
                    legend="embedding drift",
                    metric="EmbeddingsDrift",
                    metric_labels={"embeddings_name": EMBEDDINGS_NAME},
                    tags=[TAG_DRIFT],
                )
            ],
            size="half",
        ),
    ]
    for signal, title in (
        ("fg_fraction", "Predicted foreground fraction per prompt"),
        ("mean_confidence", "Mean confidence per prompt"),
        ("uncertain_share", "Uncertain pixel share per prompt (p in [0.3, 0.7])"),
    ):
        panels.append(
            line_plot_panel(title, [mean(f"{signal}__{slug(p)}", p, TAG_FIELD) for p in prompts], size="half")
        )
    for measure, title in (("n_cracks", "Cracks per photo"), ("total_length_px", "Crack length per photo (px)")):
        panels.append(
            line_plot_panel(title, [mean(f"{measure}__{slug(p)}", p, TAG_FIELD) for p in prompts], size="half")
        )
    panels += [
        line_plot_panel(
            "Champion mIoU per prompt", [mean(f"iou__{slug(p)}", p, TAG_EVAL) for p in prompts], size="half"
        ),
        line_plot_panel(
            "Champion Dice per prompt", [mean(f"dice__{slug(p)}", p, TAG_EVAL) for p in prompts], size="half"
        ),
        line_plot_panel(
            "Live traffic: challenger agreement with the champion (mask IoU) per prompt",
            [mean(f"agreement__{slug(p)}", p, TAG_SHADOW) for p in prompts],
            size="half",
        ),
    ]
    return panels


def ensure_project(ws: Any, name: str, prompts: Sequence[str]) -> Any:
    """The model's project, created with its dashboard on first use."""
    found = [p for p in ws.search_project(name) if p.name == name]
    if found:
        return found[0]
    project = ws.create_project(name, description="drywall-qa: drift, field predictions and evaluations over time")
    for panel in _panels(prompts):
        project.dashboard.add_panel(panel)
    return project


def _is_url(where: str) -> bool:
    return where.startswith(("http://", "https://"))


@contextlib.contextmanager
def _workspace_lock(where: str) -> Iterator[None]:
    """One process or thread at a time writes to a local workspace: two at once would make two
    projects of one name, or read a project file half written. A service does its own bookkeeping."""
    if _is_url(where):
        yield
        return
    Path(where).mkdir(parents=True, exist_ok=True)
    with open(Path(where) / ".drywall-project.lock", "a") as lock:  # a new open file: flock excludes threads too
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _add(
    where: str,
    model: str,
    prompts: Sequence[str],
    snapshot: Any,
    slices: dict[tuple[str, str], float] | None = None,
    panels: SlicePanels | None = None,
    meta: dict[str, Any] | None = None,
) -> str:
    """Add a run to the model's project (created with its dashboard on first use); with ``slices``
    ((key, value) -> the ``panels``' signal), one more snapshot of them, and a series per new
    slice value in its key's panel."""
    extra = _slice_report(slices, panels, meta or {}) if slices and panels is not None else None
    with _workspace_lock(where):
        ws = open_workspace(where)
        project = ensure_project(ws, model, prompts)
        run = str(ws.add_run(project.id, snapshot).id)
        if extra is not None:
            ws.add_run(project.id, extra)
            _ensure_slice_series(ws, project.id, list(slices), panels)
        return run


def slice_column(signal: str, key: str, value: str) -> str:
    return f"{signal}__{key}__{value}"


def _slice_report(values: dict[tuple[str, str], float], panels: SlicePanels, meta: dict) -> Any:
    """One row: a column per slice. Each series needs a column of its own: the dashboard's series
    query matches a series to the first filter with its metric and labels, so series that differ
    only in snapshot metadata all read the first one's values (evidently 0.7.23)."""
    frame = pd.DataFrame({slice_column(panels.signal, k, v): [x] for (k, v), x in values.items()})
    return _mean_report(frame, [panels.tag], meta)


@dataclass(frozen=True)
class SlicePanels:
    signal: str
    tag: str
    titles: dict[str, str]


DRIFT_SLICE_PANELS = SlicePanels(
    "drifted_share",
    "drift-slices",
    {
        "site": "Drifted share of features by site",
        "camera": "Drifted share of features by camera",
        "week": "Drifted share of features by capture week",
    },
)
FIELD_SLICE_PANELS = SlicePanels(
    "mean_confidence",
    "field-slices",
    {
        "site": "Mean confidence by site (all prompts)",
        "camera": "Mean confidence by camera (all prompts)",
        "week": "Mean confidence by capture week (all prompts)",
    },
)
MAX_SLICE_SERIES = 12  # a panel plots the first values seen; drift.json lists every slice


def _ensure_slice_series(ws: Any, project_id: Any, slices: list[tuple[str, str]], panels: SlicePanels) -> None:
    """Each key's panel, created on its first recorded slice, gains a series per new value."""
    from evidently.sdk.models import DashboardTabModel, PanelMetric
    from evidently.sdk.panels import line_plot_panel

    dashboard = ws.get_dashboard(project_id)
    if not dashboard.tabs:
        dashboard.tabs.append(DashboardTabModel(id=uuid.uuid4(), title="General", panels=[]))
    for key in dict.fromkeys(k for k, _ in slices):
        title = panels.titles[key]
        panel = next((p for p in dashboard.panels if p.title == title), None)
        if panel is None:
            panel = line_plot_panel(title, [], size="half")
            dashboard.panels.append(panel)
            dashboard.tabs[0].panels.append(panel.id)
        legends = [v.legend for v in panel.values]
        new = [v for k, v in slices if k == key and v not in legends][: max(MAX_SLICE_SERIES - len(legends), 0)]
        panel.values += [
            PanelMetric(
                legend=v,
                metric="MeanValue",
                metric_labels={"column": slice_column(panels.signal, key, v)},
                tags=[panels.tag],
            )
            for v in new
        ]
    ws.save_dashboard(project_id, dashboard)


def _mean_report(frame: pd.DataFrame, tags: list[str], metadata: dict[str, Any]) -> Any:
    from evidently import Report
    from evidently.metrics import MeanValue

    meta = {k: str(v) for k, v in metadata.items()}
    report = Report([MeanValue(column=c) for c in frame.columns], tags=tags, metadata=meta)
    return report.run(current_data=frame.reset_index(drop=True))


def record_drift(
    where: str,
    model: str,
    prompts: Sequence[str],
    snapshot: Any,
    slices: Sequence[dict[str, Any]] = (),
    meta: dict[str, str] | None = None,
) -> str:
    """A drift run's Evidently snapshot (drifted share, per-column drift, main feature means), and
    with the run's tested ``slices`` (``drift.json``'s) one more (tag ``drift-slices``) holding each
    slice's drifted share as a column ``drifted_share__<key>__<value>``, a series of its key's panel
    ("Drifted share of features by site")."""
    tested = {(sl["key"], sl["value"]): sl["drifted_share"] for sl in slices if sl["tested"]}
    return _add(where, model, prompts, snapshot, tested, DRIFT_SLICE_PANELS, meta)


def record_field(
    where: str, model: str, prompts: Sequence[str], summary: pd.DataFrame, meta: dict, min_photos: int = 20
) -> str:
    """A field-prediction run: per prompt, the mean foreground fraction, confidence and uncertain
    share; and per site, camera and week with ``min_photos`` photos, the mean confidence over its
    prompts (tag ``field-slices``, a column ``mean_confidence__<key>__<value>`` each), a series of its
    key's panel."""
    from drywall_core.data.slice_keys import SLICE_KEYS

    values = list(SIGNALS) + [m for m in MEASURES if m in summary.columns and summary[m].notna().any()]
    wide = summary.pivot_table(index="sha256", columns="prompt", values=values, aggfunc="mean")
    wide.columns = [f"{signal}__{slug(prompt)}" for signal, prompt in wide.columns]
    means = {}
    for key in [k for k in SLICE_KEYS if k in summary.columns]:
        for value, part in summary.groupby(key, sort=True):
            if part["sha256"].nunique() >= min_photos:
                means[(key, str(value))] = float(part.groupby("sha256")["mean_confidence"].mean().mean())
    return _add(where, model, prompts, _mean_report(wide, [TAG_FIELD], meta), means, FIELD_SLICE_PANELS, meta)


def record_evaluation(where: str, model: str, prompts: Sequence[str], metrics: dict[str, Any], meta: dict) -> str:
    """A champion evaluation: per prompt, mean IoU and Dice over the validation images."""
    prompt_of = {name: d["prompt"] for name, d in metrics["datasets"].items()}
    columns: dict[str, list[float]] = {}
    for row in metrics.get("per_image", []):
        p = slug(prompt_of.get(row["dataset"], row["dataset"]))
        columns.setdefault(f"iou__{p}", []).append(row["iou"])
        columns.setdefault(f"dice__{p}", []).append(row["dice"])
    frame = pd.DataFrame({k: pd.Series(v, dtype=float) for k, v in columns.items()})
    return _add(where, model, prompts, _mean_report(frame, [TAG_EVAL], meta))


def record_shadow(where: str, model: str, prompts: Sequence[str], agreement: pd.DataFrame, meta: dict) -> str:
    """Live shadow traffic (the prediction service): per prompt, the mean mask IoU between the
    champion's answers and a challenger's on the same requests (one column per prompt)."""
    frame = agreement.rename(columns={p: f"agreement__{slug(p)}" for p in agreement.columns})
    return _add(where, model, prompts, _mean_report(frame, [TAG_SHADOW], meta))
