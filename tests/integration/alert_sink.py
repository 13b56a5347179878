"""A Slack-compatible incoming webhook on loopback, for the alert tests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink:
    """A Slack-compatible incoming webhook on loopback: records every JSON body posted to it (and,
    in ``requests``, each one's path and Authorization header: it also stands in for Prefect's
    ``POST /api/events``)."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        self.requests: list[tuple[str, str | None, object]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.messages.append(json.loads(body or b"{}"))
                sink.requests.append((self.path, self.headers.get("Authorization"), sink.messages[-1]))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/XXXX"

    def events(self, name: str) -> list[dict]:
        """The Prefect events of that name posted to ``/api/events``."""
        return [e for path, _, body in self.requests if path == "/api/events" for e in body if e["event"] == name]
