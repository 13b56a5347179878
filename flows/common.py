"""What the flows share: where a run writes, and the source description."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect.runtime import flow_run
from pydantic import BaseModel

from drywall_core.config import get_settings


class Source(BaseModel):
    """Where an export comes from. ``synthetic`` yields one export per task (cracks, drywall-join).

    The kind is always explicit: a flow given no sources at all resolves the latest Roboflow version
    of every registered dataset (the production default), never the synthetic sample.
    """

    kind: Literal["synthetic", "local", "roboflow"]
    path: str | None = None
    workspace: str | None = None
    project: str | None = None
    version: int | None = None
    dataset: str | None = None
    seed: int = 0

    def slug(self) -> str:
        if self.kind == "roboflow":
            return f"roboflow-{self.workspace}-{self.project}-v{self.version}"
        if self.kind == "local":
            return f"local-{Path(self.path or '.').resolve().name}"
        return f"synthetic-seed{self.seed}"


def run_dir(kind: str) -> Path:
    """``$DRYWALL_HOME/runs/<kind>/<flow run id>`` (a timestamp outside a flow run)."""
    run_id = flow_run.get_id() or "local"
    d = Path(get_settings().home).resolve() / "runs" / kind / str(run_id)
    d.mkdir(parents=True, exist_ok=True)
    return d


def data_dir() -> Path:
    return Path(get_settings().home).resolve() / "data"
