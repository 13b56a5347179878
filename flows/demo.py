"""`drywall demo`: the retrain flow end to end on embedded defaults.

Synthetic sample, a tiny CLIPSeg generated under ``$DRYWALL_HOME/models``, the local registry,
and Prefect's ephemeral API unless ``PREFECT_API_URL`` points at a server. A second run judges
its candidate against the champion the first one promoted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from drywall_core.base.config import Settings
from drywall_core.model.tiny import init_tiny

DEMO_PROFILE = "tiny-demo"  # the recipe the generated tiny model needs (drywall_core.base.config.TRAIN_PROFILES)


def run_demo(settings: Settings, console: Console | None = None) -> dict[str, Any]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # a fresh PREFECT_HOME migrates its database first: on 2 cores that outlasts Prefect's 20 s default
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from drywall_core.stages.context import model_registry as registry
    from flows.common import Source
    from flows.retrain import retrain

    console = console or Console()
    home = Path(settings.home).resolve()
    tiny = home / "models" / "tiny-clipseg"
    if not (tiny / "config.json").is_file():
        init_tiny(tiny)
    t0 = time.perf_counter()
    # force: a second demo run re-trains on the same sample to show the gate judging it
    summary = retrain(sources=[Source(kind="synthetic")], base_model=str(tiny), profile=DEMO_PROFILE, force=True)
    reg = registry()
    champion = reg.champion_version()
    metrics = summary["candidate_metrics"]
    title = f"drywall-qa demo: retrain flow in {time.perf_counter() - t0:.0f}s"
    rows = [
        ("candidate", f"{summary['version']} ({'PROMOTED' if summary['promoted'] else 'refused'})"),
        ("gate", summary["reason"]),
        ("champion", f"{champion}  ({reg.store.url}/{reg.version_key(champion or '')})"),
        ("candidate metrics", f"mIoU {metrics['miou']:.3f}, mean Dice {metrics['mean_dice']:.3f}"),
        ("reports", f"{summary['staging']}/eval"),
        ("audit log", f"{reg.store.url}/{reg.audit_key}"),
    ]
    if console.is_terminal:
        table = Table(title=title)
        table.add_column("")
        table.add_column("")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:  # a log or a pipe: whole paths, one per line, nothing cut to a terminal's width
        print(title)
        for key, value in rows:
            print(f"{key}: {value}")
    return summary
