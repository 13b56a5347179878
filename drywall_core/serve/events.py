"""Promotions heard at once: ``drywall.model.promoted`` from Prefect's event stream nudges the
follower, so a promoted model serves within seconds instead of at the next poll.

Prefect's server streams events over a websocket (``<PREFECT_API_URL>/events/out``, subprotocol
``prefect``): an ``auth`` message, then a ``filter``, then one ``event`` message per match. It is
spoken here directly, as :class:`~drywall_core.stages.context.HttpEvents` posts events, so the core
imports no Prefect. The poll stays the source of truth: a lost connection is retried with backoff
and costs only latency.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta

from drywall_core.serve.follow import Follower
from drywall_core.stages.registry import PROMOTED_EVENT

log = logging.getLogger(__name__)


def socket_url(api_url: str) -> str:
    url = api_url.rstrip("/")
    ws = (
        "wss://" + url.removeprefix("https://") if url.startswith("https://") else "ws://" + url.removeprefix("http://")
    )
    return ws + "/events/out"


def listen_for_promotions(api_url: str, token: str | None, model: str):
    """A listener for :class:`~drywall_core.serve.app.Service`: nudges ``follower`` on each
    promotion of ``model`` until ``stop`` is set."""

    def listen(follower: Follower, stop: threading.Event) -> None:
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        delay = 1.0
        while not stop.is_set():
            try:
                with connect(socket_url(api_url), subprotocols=["prefect"], open_timeout=10, close_timeout=2) as ws:
                    ws.send(json.dumps({"type": "auth", "token": token}))
                    answer = json.loads(ws.recv(timeout=10))
                    if answer.get("type") != "auth_success":
                        raise ConnectionError(f"event stream refused: {answer.get('reason', answer)}")
                    now = datetime.now(UTC)
                    ws.send(
                        json.dumps(
                            {
                                "type": "filter",
                                "filter": {
                                    "occurred": {
                                        "since": now.isoformat(),
                                        "until": (now + timedelta(days=365)).isoformat(),
                                    },
                                    "event": {"name": [PROMOTED_EVENT]},
                                    "any_resource": {"id": [f"drywall.model.{model}"]},
                                },
                            }
                        )
                    )
                    log.info("following %s on %s", PROMOTED_EVENT, socket_url(api_url))
                    delay = 1.0
                    while not stop.is_set():
                        try:
                            message = json.loads(ws.recv(timeout=1.0))
                        except TimeoutError:
                            continue
                        if message.get("type") == "event":
                            log.info("promotion event: %s", message["event"].get("payload"))
                            follower.nudge()
            except (OSError, WebSocketException, ValueError, ConnectionError) as exc:
                log.warning(
                    "event stream %s: %s: %s; retrying in %.0f s", socket_url(api_url), type(exc).__name__, exc, delay
                )
                stop.wait(delay)
                delay = min(delay * 2, 60.0)

    return listen
