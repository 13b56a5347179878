"""The stages' context under Prefect: progress, tables and links become UI artifacts and run logs;
events go through Prefect's ``emit_event`` (related to the flow run that emitted them)."""

from __future__ import annotations

import uuid
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.events import emit_event

from drywall_core.base.config import get_settings
from drywall_core.stages.context import Context
from tasks.artifacts import artifact_key, image, link, markdown


class PrefectReporter:
    """A stage's report in the Prefect UI: log lines, progress artifacts, markdown, tables, links."""

    def __init__(self) -> None:
        self._progress: dict[str, Any] = {}

    def info(self, message: str) -> None:
        get_run_logger().info("%s", message)

    def warn(self, message: str) -> None:
        get_run_logger().warning("%s", message)

    def progress(self, key: str, done: int, total: int, note: str = "") -> None:
        """Best effort: an unreachable Prefect API must not stop the work it reports on."""
        percent = 100.0 * done / max(total, 1)
        description = note or f"{done}/{total}"
        try:
            if key not in self._progress:
                self._progress[key] = create_progress_artifact(percent, key=artifact_key(key), description=description)
            else:
                update_progress_artifact(self._progress[key], percent, description=description)
        except Exception as exc:  # noqa: BLE001 - reported; the next update tries again
            get_run_logger().warning("%s: progress not recorded (%s)", key, exc)

    def markdown(self, key: str, text: str, description: str = "") -> None:
        markdown(text, key, description)

    def table(self, key: str, rows: list[dict[str, Any]], description: str = "") -> None:
        create_table_artifact(rows, key=artifact_key(key), description=description)

    def link(self, key: str, url: str, title: str, description: str = "") -> None:
        link(url, title, key, description)

    def image(self, key: str, url: str, description: str = "") -> None:
        image(url, key, description)


class PrefectEvents:
    def emit(
        self, event: str, resource: dict[str, str], payload: dict[str, Any], event_id: str | None = None
    ) -> str | None:
        kwargs: dict[str, Any] = {"id": uuid.UUID(event_id)} if event_id else {}
        sent = emit_event(event=event, resource=resource, payload=payload, **kwargs)
        return str(sent.id) if sent else None


def flow_context() -> Context:
    """The context a task gives its stage: this process's settings, the Prefect reporter and events."""
    return Context(get_settings(), PrefectReporter(), PrefectEvents())
