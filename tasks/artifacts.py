"""Helpers for Prefect UI artifacts (keys: lowercase letters, digits, dashes)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect.artifacts import create_image_artifact, create_link_artifact, create_markdown_artifact

from drywall_core.base.config import get_settings
from drywall_core.base.storage import store_from_settings


def artifact_key(*parts: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")[:100]


def upload_report(path: Path, run_id: str) -> str:
    """Put a report file in the artifact store under ``runs/<run id>/`` and return a link to it."""
    store = store_from_settings(get_settings())
    key = f"runs/{run_id}/{Path(path).name}"
    store.put_file(Path(path), key)
    return store.link(key)


def link(url: str, text: str, key: str, description: str = "") -> None:
    create_link_artifact(link=url, link_text=text, key=artifact_key(key), description=description)


def image(url: str, key: str, description: str = "") -> None:
    create_image_artifact(image_url=url, key=artifact_key(key), description=description)


def markdown(text: str, key: str, description: str = "") -> Any:
    return create_markdown_artifact(markdown=text, key=artifact_key(key), description=description)
