"""Webhook receiver: signed deliveries in, exactly one Prefect event per delivery out.

``POST /hooks/roboflow`` (a dataset version was published) -> ``drywall.dataset.published``;
``POST /hooks/field-images`` (``{"bucket", "keys"}`` or an S3 event notification) ->
``drywall.field-images.arrived``; ``GET /healthz``. The deployment triggers in
``deployments/prefect.yaml`` turn the events into flow runs. Events are POSTed to the Prefect
API (``$PREFECT_API_URL/events``) before the receiver answers 202, so an accepted delivery is
never lost in a local queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from drywall_core.base.config import get_settings
from drywall_core.data.webhooks import (
    MAX_BODY_BYTES,
    DeliveryBusy,
    DeliveryConflict,
    DeliveryStore,
    FieldImagesArrived,
    FieldImagesPolicy,
    SchemaError,
    SignatureError,
    chunk_keys,
    fingerprint,
    parse_dataset,
    parse_field_images,
    verify,
)
from drywall_core.stages.context import HttpEvents

log = logging.getLogger("drywall.webhook")
Emitter = Callable[[str, str, dict[str, Any], str | None], str]


EMIT_TIMEOUT_S = 5.0  # well inside the delivery lease, so a slow API cannot cause a double emission
HEALTH_TIMEOUT_S = 1.0


def prefect_emitter(
    api_url: str, api_key: str | None = None, timeout: float = EMIT_TIMEOUT_S, auth_string: str | None = None
) -> Emitter:
    """Send one event to the Prefect API and return its id (raises if the API refuses, so the
    delivery is answered 503 and the sender retries). ``api_key`` is Prefect Cloud's bearer key;
    ``auth_string`` a self-hosted server's basic auth (``PREFECT_API_AUTH_STRING``)."""
    events = HttpEvents(api_url, auth_string, api_key, timeout)

    def emit(event: str, resource_id: str, payload: dict[str, Any], event_id: str | None = None) -> str:
        return events.send(event, {"prefect.resource.id": resource_id}, payload, event_id)

    return emit


def event_uuid(delivery: str, part: int) -> str:
    """The same delivery and part always get the same event id (a retried delivery re-sends them)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"drywall-qa/webhook/{delivery}/{part}"))


def field_image_events(f: FieldImagesArrived) -> list[tuple[str, dict[str, Any]]]:
    """One event per chunk of keys, each far below Prefect's event size cap."""
    chunks = chunk_keys(f.keys)
    return [
        (
            "drywall.field-images",
            {
                "bucket": f.bucket,
                "keys": keys,
                "keys_json": json.dumps(keys),
                "count": len(keys),
                "part": i + 1,
                "parts": len(chunks),
            },
        )
        for i, keys in enumerate(chunks)
    ]


def create_app(
    secrets: list[str],
    store: DeliveryStore,
    emit: Emitter,
    health_url: str | None = None,
    field_policy: FieldImagesPolicy | None = None,
) -> FastAPI:
    """The receiver. Storage and emission run in worker threads, so a slow Prefect API delays only
    its own delivery: other deliveries and ``/healthz`` are answered meanwhile. Field-image keys
    are checked against ``field_policy`` (the configured bucket and prefix; none configured: every
    field-images delivery is refused)."""
    policy = field_policy or FieldImagesPolicy(bucket=None)
    if not any(secrets):
        raise ValueError("no webhook secret: set DRYWALL_WEBHOOK_SECRET")
    app = FastAPI(title="drywall-qa webhook receiver", docs_url=None, redoc_url=None, openapi_url=None)

    async def read_limited(request: Request) -> bytes | None:
        declared = request.headers.get("content-length")
        if declared and (len(declared) > 12 or (declared.isdigit() and int(declared) > MAX_BODY_BYTES)):
            return None
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return None
        return bytes(body)

    def refuse(status: int, why: str, request: Request) -> JSONResponse:
        client = request.client.host if request.client else "?"
        log.warning(
            "refused %s %s from %s (delivery %s): %s",
            request.method,
            request.url.path,
            client,
            request.headers.get("x-drywall-delivery", "-"),
            why,
        )
        return JSONResponse({"error": why}, status_code=status)

    async def handle(
        request: Request,
        parse: Callable[[bytes], Any],
        event: str,
        describe: Callable[[Any], list[tuple[str, dict[str, Any]]]],
    ) -> JSONResponse:
        body = await read_limited(request)
        if body is None:
            return refuse(413, f"body over {MAX_BODY_BYTES} bytes", request)
        h = request.headers
        try:
            verify(secrets, h.get("x-drywall-timestamp"), h.get("x-drywall-signature"), body)
        except SignatureError as exc:
            return refuse(401, str(exc), request)
        delivery = h.get("x-drywall-delivery", "").strip()
        if not delivery or len(delivery) > 200:
            return refuse(422, "missing or oversized X-Drywall-Delivery header", request)
        try:
            parsed = parse(body)
        except SchemaError as exc:
            return refuse(422, str(exc), request)
        parts = describe(parsed)

        def send() -> dict[str, Any]:
            # the delivery is done only once the API took every part; a retry sends the same ids
            ids = [
                emit(event, resource, {**payload, "delivery": delivery}, event_uuid(delivery, i))
                for i, (resource, payload) in enumerate(parts)
            ]
            log.info("delivery %s -> %s %s", delivery, event, ", ".join(ids))
            return {"event_id": ids[0], "event_ids": ids, "event": event, "delivery": delivery}

        try:
            outcome = await asyncio.to_thread(store.process, delivery, send, fingerprint(request.url.path, body))
        except DeliveryConflict as exc:
            return refuse(409, str(exc), request)
        except DeliveryBusy as exc:
            return refuse(503, str(exc), request)
        except Exception as exc:  # noqa: BLE001 - the sender should retry later
            log.error("delivery %s: could not emit %s: %s", delivery, event, exc)
            return JSONResponse({"error": "could not record the event; retry later"}, status_code=503)
        return JSONResponse(outcome.body, status_code=outcome.status)

    async def prefect_reachable() -> bool | None:
        if not health_url:
            return None
        try:
            async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT_S) as client:
                return (await client.get(health_url)).status_code == 200
        except httpx.HTTPError:
            return False

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        reachable, count = await asyncio.gather(prefect_reachable(), asyncio.to_thread(store.count))
        return {"status": "ok", "prefect_api_reachable": reachable, "deliveries": count}

    @app.post("/hooks/roboflow")
    async def roboflow(request: Request) -> JSONResponse:
        return await handle(
            request,
            parse_dataset,
            "drywall.dataset.published",
            lambda d: [(f"drywall.dataset.{d.workspace}.{d.project}", d.model_dump())],
        )

    @app.post("/hooks/field-images")
    async def field_images(request: Request) -> JSONResponse:
        return await handle(
            request,
            lambda body: parse_field_images(body, policy),
            "drywall.field-images.arrived",
            field_image_events,
        )

    return app


def app_from_environment() -> FastAPI:
    """The app as ``drywall webhook serve`` runs it: secrets, store and Prefect API from settings."""
    s = get_settings()
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        raise ValueError("PREFECT_API_URL is not set: the receiver needs a Prefect server to send events to")
    secrets = [x.get_secret_value() for x in (s.webhook_secret, s.webhook_previous_secret) if x]
    store = DeliveryStore(Path(s.home) / "webhooks" / "deliveries.sqlite")
    emit = prefect_emitter(
        api_url, os.environ.get("PREFECT_API_KEY"), auth_string=os.environ.get("PREFECT_API_AUTH_STRING")
    )
    policy = FieldImagesPolicy(bucket=s.s3_bucket, prefix=s.field_images_prefix)
    return create_app(secrets, store, emit, health_url=api_url.rstrip("/") + "/health", field_policy=policy)
