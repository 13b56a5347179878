"""The demo: the data plane end to end on a synthetic sample, with no network and no setup.

(The orchestration stage turns this into the full retrain flow.)
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from drywall_core.config import Settings
from drywall_core.datasets import load_registry
from drywall_core.errors import CheckFailed
from drywall_core.exports import open_export
from drywall_core.masks import render_masks
from drywall_core.sources import generate_synthetic
from drywall_core.splits import split_by_source, write_plan
from drywall_core.validation import fresh_docs_dir, validate_export, write_report


def run_demo(settings: Settings, console: Console | None = None) -> dict[str, dict]:
    """Generate the sample, then validate, render masks and split each export; returns a summary."""
    console = console or Console(stderr=False)
    root = Path(settings.home) / "demo"
    registry = load_registry(settings.datasets_file)
    t0 = time.perf_counter()
    exports = generate_synthetic(root / "sample", seed=settings.split_seed, overwrite=True)
    summary: dict[str, dict] = {}
    for name, path in exports.items():
        export = open_export(path)
        spec = registry.get(name)
        report_path = root / "reports" / f"{name}-validation.json"
        report = validate_export(export, spec, settings, docs_dir=fresh_docs_dir(report_path))
        write_report(report, report_path)
        if not report.success:
            raise CheckFailed(f"{path}: synthetic sample failed validation: {report.lines()}")
        stats = render_masks(export, root / "masks" / name, workers=settings.mask_workers)
        plan = split_by_source(export, settings.split_seed, settings.val_fraction)
        write_plan(plan, root / "splits" / f"{name}.json")
        summary[name] = {
            "prompt": spec.prompt,
            "images": sum(len(s.images) for s in export.splits.values()),
            "masks": stats.rendered + stats.skipped,
            "train": len(plan.train),
            "val": len(plan.val),
            "report": str(report_path),
            "data_docs": report.data_docs,
        }
    table = Table(title=f"drywall-qa demo (data plane) in {time.perf_counter() - t0:.1f}s")
    for col in ("dataset", "prompt", "images", "masks", "train", "val"):
        table.add_column(col)
    for name, row in summary.items():
        table.add_row(name, row["prompt"], *(str(row[k]) for k in ("images", "masks", "train", "val")))
    console.print(table)
    console.print(f"outputs under {root.resolve()}")
    for name, row in summary.items():
        console.print(f"  {name}: report {row['report']}; data docs {row['data_docs']}")
    return summary
