"""What every stage is given: settings and the services built from them, once, plus two small
interfaces the caller supplies -- where progress, tables and links go (:class:`Reporter`), and where
events go (:class:`EventSink`). The command line and Prefect each implement both; a stage never
knows which one it runs under."""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from drywall_core.base.config import Settings, get_settings

log = logging.getLogger("drywall_core.stages")

MAX_EVENT_BYTES = 1_400_000  # Prefect's server drops events over 1.5 MB (PREFECT_EVENTS_MAXIMUM_SIZE_BYTES)


class Reporter(Protocol):
    """Where a stage shows what it does: a terminal, or the Prefect UI (logs, artifacts)."""

    def info(self, message: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def progress(self, key: str, done: int, total: int, note: str = "") -> None: ...
    def markdown(self, key: str, text: str, description: str = "") -> None: ...
    def table(self, key: str, rows: list[dict[str, Any]], description: str = "") -> None: ...
    def link(self, key: str, url: str, title: str, description: str = "") -> None: ...
    def image(self, key: str, url: str, description: str = "") -> None: ...


class EventSink(Protocol):
    """Where a decision's events go (Prefect's event API, which the alert automations read)."""

    def emit(
        self, event: str, resource: dict[str, str], payload: dict[str, Any], event_id: str | None = None
    ) -> str | None: ...


class ConsoleReporter:
    """The command line's reporter: lines and progress on stderr; tables and links are the
    command's own output, so they are not repeated here."""

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream
        self._last: dict[str, int] = {}

    @property
    def stream(self) -> Any:
        return self._stream or sys.stderr  # looked up per line: whatever stderr is now (redirected, captured)

    def info(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=self.stream, flush=True)

    def progress(self, key: str, done: int, total: int, note: str = "") -> None:
        """One line per tenth of the way (and at the end): readable in a log file as on a terminal."""
        step = max(total // 10, 1)
        if done < total and done // step == self._last.get(key, -1):
            return
        self._last[key] = done // step
        print(f"{key}: {done}/{total}" + (f" ({note})" if note else ""), file=self.stream, flush=True)

    def markdown(self, key: str, text: str, description: str = "") -> None:
        return None

    def table(self, key: str, rows: list[dict[str, Any]], description: str = "") -> None:
        return None

    def link(self, key: str, url: str, title: str, description: str = "") -> None:
        return None

    def image(self, key: str, url: str, description: str = "") -> None:
        return None


class QuietReporter(ConsoleReporter):
    """Records what a stage reported, for tests and for callers that present it themselves."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.artifacts: dict[str, Any] = {}

    def info(self, message: str) -> None:
        self.lines.append(message)

    def warn(self, message: str) -> None:
        self.lines.append(f"warning: {message}")

    def progress(self, key: str, done: int, total: int, note: str = "") -> None:
        self.artifacts[key] = (done, total)

    def markdown(self, key: str, text: str, description: str = "") -> None:
        self.artifacts[key] = text

    def table(self, key: str, rows: list[dict[str, Any]], description: str = "") -> None:
        self.artifacts[key] = rows

    def link(self, key: str, url: str, title: str, description: str = "") -> None:
        self.artifacts[key] = url

    def image(self, key: str, url: str, description: str = "") -> None:
        self.artifacts[key] = url


class NoEvents:
    """No Prefect API configured: the event is logged, not sent."""

    def emit(
        self, event: str, resource: dict[str, str], payload: dict[str, Any], event_id: str | None = None
    ) -> str | None:
        log.info("event %s (not sent: PREFECT_API_URL is not set)", event)
        return None


@dataclass
class RecordedEvent:
    event: str
    resource: dict[str, str]
    payload: dict[str, Any]
    id: str


@dataclass
class MemoryEvents:
    """Keeps the events it is given (tests; comparing what two routes emitted)."""

    sent: list[RecordedEvent] = field(default_factory=list)

    def emit(
        self, event: str, resource: dict[str, str], payload: dict[str, Any], event_id: str | None = None
    ) -> str | None:
        self.sent.append(RecordedEvent(event, dict(resource), dict(payload), event_id or str(uuid.uuid4())))
        return self.sent[-1].id


def auth_headers(auth_string: str | None, api_key: str | None = None) -> dict[str, str]:
    """The ``Authorization`` header Prefect's client sends: Prefect Cloud's bearer ``api_key``, or a
    self-hosted server's basic auth (``PREFECT_API_AUTH_STRING``, ``user:password``)."""
    import base64

    if api_key:
        return {"Authorization": f"Bearer {api_key}"}
    if not auth_string:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(auth_string.encode()).decode()}


class HttpEvents:
    """Events posted to a Prefect server's ``/api/events`` (the command line's sink and the webhook
    receiver's emitter: no Prefect import, the same events a flow emits)."""

    def __init__(self, api_url: str, auth_string: str | None = None, api_key: str | None = None, timeout: float = 5.0):
        import httpx

        headers = {"Content-Type": "application/json", **auth_headers(auth_string, api_key)}
        self.client = httpx.Client(base_url=api_url.rstrip("/") + "/", headers=headers, timeout=timeout)

    def send(self, event: str, resource: dict[str, str], payload: dict[str, Any], event_id: str | None = None) -> str:
        """Post one event and return its id; raises when the API refuses it or cannot be reached."""
        event_id = event_id or str(uuid.uuid4())
        resource = {"prefect.resource.name": resource["prefect.resource.id"], **resource}
        body = [
            {
                "id": event_id,
                "occurred": datetime.now(UTC).isoformat(),
                "event": event,
                "resource": resource,
                "payload": payload,
            }
        ]
        encoded = json.dumps(body, default=str).encode()
        if len(encoded) > MAX_EVENT_BYTES:  # the server would drop it without a word: refuse it here
            raise ValueError(f"event {event} of {len(encoded)} bytes is over Prefect's {MAX_EVENT_BYTES} cap")
        self.client.post("events", content=encoded).raise_for_status()
        return event_id

    def emit(
        self, event: str, resource: dict[str, str], payload: dict[str, Any], event_id: str | None = None
    ) -> str | None:
        """:meth:`send`, where a failure is a warning: the decision it reports is recorded already."""
        try:
            return self.send(event, resource, payload, event_id)
        except Exception as exc:  # noqa: BLE001 - the decision is in the audit log and the store: say so, go on
            log.warning("event %s not sent to %s: %s: %s", event, self.client.base_url, type(exc).__name__, exc)
            return None


def events_from_environment() -> EventSink:
    """Prefect's event API when ``PREFECT_API_URL`` is set, else :class:`NoEvents`."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return NoEvents()
    return HttpEvents(url, os.environ.get("PREFECT_API_AUTH_STRING"), os.environ.get("PREFECT_API_KEY"))


@dataclass
class Context:
    """Settings and the services a stage uses, each built on first use from the same settings."""

    settings: Settings = field(default_factory=get_settings)
    reporter: Reporter = field(default_factory=ConsoleReporter)
    events: EventSink = field(default_factory=NoEvents)
    artifacts: Any = None  # an artifact store to use instead of the one the settings name

    @cached_property
    def store(self) -> Any:
        from drywall_core.base.storage import store_from_settings

        return self.artifacts if self.artifacts is not None else store_from_settings(self.settings)

    @cached_property
    def datasets(self) -> Any:
        from drywall_core.data.datasets import load_registry

        return load_registry(self.settings.datasets_file)

    @cached_property
    def models(self) -> Any:
        from drywall_core.release.registry import ModelRegistry

        return ModelRegistry(self.store, self.settings.model_name)

    @property
    def prompts(self) -> list[str]:
        """The canonical prompt of every registered dataset."""
        return self.datasets.canonical_prompts

    def model_path(self, ref: str | Path) -> str:
        """A model reference (hub id, folder, ``registry:champion``, ``registry:<version>``) as loadable."""
        from drywall_core.release.registry import resolve_model

        return resolve_model(ref, self.settings)

    def inference_model(self, ref: str | Path, precision: str | None = None) -> Any:
        """A model reference loaded for prediction at the configured precision (``DRYWALL_INFERENCE_PRECISION``)."""
        from drywall_core.model.runtime import load_for_inference

        s = self.settings
        return load_for_inference(self.model_path(ref), precision or s.inference_precision, s.inference_device)

    def roboflow_client(self, workspace: str, project: str) -> Any:
        from drywall_core.base.errors import InputError
        from drywall_core.field.label_queue import RoboflowProjectClient

        key = self.settings.roboflow_key()
        if not key:
            raise InputError("no Roboflow API key: set DRYWALL_ROBOFLOW_API_KEY or ROBOFLOW_API_KEY")
        return RoboflowProjectClient(workspace, project, key, self.settings.roboflow_api_url)

    def with_settings(self, **update: Any) -> Context:
        """The same reporter and events over settings with ``update`` applied (e.g. a run's recorded split)."""
        return Context(self.settings.model_copy(update=update), self.reporter, self.events, self.artifacts)


def model_registry(settings: Settings | None = None) -> Any:
    """The model registry the settings name (local folder or S3)."""
    return Context(settings or get_settings()).models
