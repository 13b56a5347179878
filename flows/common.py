"""What the flows share: where a run writes, and the source description."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from prefect.runtime import flow_run
from pydantic import BaseModel

from drywall_core.base.config import get_settings


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


def field_keys(keys: list[str] | str | None) -> list[str] | None:
    """Event triggers render parameters as text: accept a JSON list too."""
    if isinstance(keys, str):
        parsed = json.loads(keys) if keys.strip().startswith("[") else [keys]
        return [str(k) for k in parsed]
    return keys


def field_source(folder: str | None, bucket: str | None, prefix: str | None) -> tuple[str | None, str | None, str]:
    """(folder, bucket, prefix) of field photos: the given ones, else the configured bucket under
    ``DRYWALL_FIELD_IMAGES_PREFIX``, else the folder ``$DRYWALL_HOME/field-images``."""
    s = get_settings()
    prefix = prefix if prefix is not None else s.field_images_prefix
    if not folder and not bucket:
        bucket = s.s3_bucket
        folder = None if bucket else str(s.field_images_dir)
    return folder, bucket, prefix
