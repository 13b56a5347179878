"""Publish a run of `drywall train` through the promotion gate, as the retrain flow does.

The candidate and the champion are evaluated by the gate itself on the run's own validation images
(the exports and split recorded in ``run.json`` when the run was trained); the run's
``eval/metrics.json`` is only a claim, refused by name when the measurement does not bear it out.
The gate decides on both measurements, the run's model
is published as a new immutable version either way, and :meth:`ModelRegistry.settle` moves the
champion (compare-and-swap) or records the refusal.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drywall_core.config import Settings
from drywall_core.errors import InputError
from drywall_core.fsutil import atomic_write_text
from drywall_core.registry import ModelRegistry

RUN_INPUTS = "run.json"


def record_run_inputs(out: Path, exports: list[Path], datasets: list[str], settings: Settings) -> None:
    """What publishing needs to judge a run like the flow does: its data and its split."""
    inputs = {
        "exports": [str(Path(e).resolve()) for e in exports],
        "datasets": datasets,
        "split_seed": settings.split_seed,
        "val_fraction": settings.val_fraction,
    }
    atomic_write_text(Path(out) / RUN_INPUTS, json.dumps(inputs, indent=2))


@dataclass
class Published:
    version: str
    decision: dict[str, Any]
    outcome: dict[str, Any]


def publish_run(
    reg: ModelRegistry, run_dir: Path, settings: Settings, exports: list[Path] | None = None, reason: str = ""
) -> Published:
    """Gate, publish and settle a finished run folder (``model/``, ``eval/metrics.json``)."""
    from drywall_core.evaluate import evaluate
    from drywall_core.gate import decide
    from drywall_core.model import load_model
    from drywall_core.samples import collect_samples

    run_dir = Path(run_dir)
    artifact, metrics_file = run_dir / "model", run_dir / "eval" / "metrics.json"
    if not (artifact / "manifest.json").is_file() or not metrics_file.is_file():
        raise InputError(f"{run_dir}: not a finished `drywall train` run (model/manifest.json, eval/metrics.json)")
    inputs_file = run_dir / RUN_INPUTS
    inputs = json.loads(inputs_file.read_text()) if inputs_file.is_file() else {}
    if not exports and not inputs.get("exports"):
        raise InputError(f"{inputs_file}: missing; pass --export so the gate measures the run on known images")
    recorded = not exports  # the run's own data and split, unless the caller names other exports
    s = settings.model_copy(update={k: inputs[k] for k in ("split_seed", "val_fraction") if recorded and k in inputs})
    paths = [Path(e) for e in inputs["exports"]] if recorded else list(exports)
    samples, specs = collect_samples(paths, s, inputs.get("datasets") if recorded else None)
    val = [x for x in samples if x.side == "val"]
    # the gate's own measurement: a metrics file is a claim, checked against it, never believed
    measured = evaluate(load_model(artifact), val, specs, progress=False)
    current = reg.champion()
    champion_metrics = None
    if current:
        with tempfile.TemporaryDirectory() as tmp:
            champion = load_model(reg.download(current[0]["version"], Path(tmp) / "champion"))
            champion_metrics = evaluate(champion, val, specs, progress=False)
    claimed = json.loads(metrics_file.read_text())
    decision = decide(measured, champion_metrics, settings.gate, claimed=claimed).to_dict()
    record = reg.publish(artifact, extra={"gate": decision, "run_dir": str(run_dir.resolve()), "reason": reason})
    outcome = reg.settle(record["version"], current[1] if current else None, decision)
    return Published(record["version"], decision, outcome)
