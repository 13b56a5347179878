"""A loopback stand-in for the Roboflow REST API, enough for the real SDK's ``download()``,
``upload_image()`` and ``save_annotation()``.

Serves one project version whose COCO export is a zip built from a real export folder, and
accepts image uploads (multipart, answered like Roboflow: a new id, or ``duplicate`` for bytes it
holds already) and annotations (JSON ``annotationFile`` + flags in the query), recording both in
``uploads`` and ``annotations``. Faults are injected per instance: ``truncate_next`` download
attempts send half the zip and hang up; ``fail_uploads_next`` uploads answer 503.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import io
import json
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse


def zip_export(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return buf.getvalue()


class FakeRoboflow:
    def __init__(self, workspace: str, project: str, version: int, zip_bytes: bytes, api_key: str) -> None:
        self.workspace, self.project, self.version = workspace, project, version
        self.zip_bytes, self.api_key = zip_bytes, api_key
        self.truncate_next = 0
        self.stall_s = 0.0
        self.downloads = 0
        self.requests: list[str] = []
        self.uploads: list[dict] = []  # one per image the project holds: id, name, batch, tags, sha256, bytes
        self.annotations: list[dict] = []  # one per accepted annotation: image_id, name, job, prediction, coco
        self.fail_uploads_next = 0
        self.upload_attempts = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeRoboflow:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- API payloads -------------------------------------------------------------------------
    def _project(self) -> dict:
        now = time.time()
        return {
            "id": f"{self.workspace}/{self.project}",
            "name": self.project,
            "type": "instance-segmentation",
            "annotation": "crack",
            "classes": {"crack": 1},
            "colors": {},
            "created": now,
            "updated": now,
            "images": 124,
            "public": True,
            "splits": {"valid": 120, "test": 4},
            "unannotated": 0,
        }

    def _version(self) -> dict:
        return {
            "id": f"{self.workspace}/{self.project}/{self.version}",
            "name": self.project,
            "created": time.time(),
            "images": 124,
            "splits": {"valid": 120, "test": 4},
            "augmentation": {},
            "preprocessing": {},
            "exports": ["coco"],
            "generating": False,
            "progress": 1.0,
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _json(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                key = parse_qs(urlparse(self.path).query).get("api_key", [""])[0]
                if key != fake.api_key:
                    self._json(401, {"error": {"message": "This API key does not exist"}})
                    return False
                return True

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                path = urlparse(self.path).path
                fake.requests.append(f"POST {path}")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self._authorised():
                    return None
                parts = [p for p in path.split("/") if p]
                query = parse_qs(urlparse(self.path).query)
                if parts[:1] == ["dataset"] and len(parts) == 3 and parts[2] == "upload":
                    return self._upload(parts[1], query, body)
                if parts[:1] == ["dataset"] and len(parts) == 4 and parts[2] == "annotate":
                    return self._annotate(parts[1], parts[3], query, body)
                return self._json(200, {"welcome": "fake", "workspace": fake.workspace})

            def _upload(self, project: str, query: dict, body: bytes) -> None:
                fake.upload_attempts += 1
                if project != fake.project:
                    return self._json(404, {"error": {"message": f"project {project} not found"}})
                if fake.fail_uploads_next > 0:
                    fake.fail_uploads_next -= 1
                    return self._json(503, {"error": {"message": "service unavailable, try again"}})
                msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body
                )
                fields = {
                    part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                    for part in msg.iter_parts()
                }
                data = fields.get("file") or b""
                digest = hashlib.sha256(data).hexdigest()
                for held in fake.uploads:
                    if held["sha256"] == digest:
                        return self._json(200, {"duplicate": True, "id": held["id"]})
                image_id = f"img{len(fake.uploads) + 1:04d}"
                fake.uploads.append(
                    {
                        "id": image_id,
                        "name": (fields.get("name") or b"").decode(),
                        "split": (fields.get("split") or b"").decode(),
                        "batch": query.get("batch", [""])[0],
                        "tags": query.get("tag", []),
                        "sha256": digest,
                        "bytes": data,
                    }
                )
                return self._json(200, {"success": True, "id": image_id})

            def _annotate(self, project: str, image_id: str, query: dict, body: bytes) -> None:
                if project != fake.project or image_id not in {u["id"] for u in fake.uploads}:
                    return self._json(404, {"error": {"message": f"image {image_id} not found"}})
                doc = json.loads(body)
                fake.annotations.append(
                    {
                        "image_id": image_id,
                        "name": query.get("name", [""])[0],
                        "job": query.get("jobName", [""])[0],
                        "prediction": query.get("prediction", ["false"])[0] == "true",
                        "coco": json.loads(doc["annotationFile"]),
                        "labelmap": doc.get("labelmap"),
                    }
                )
                return self._json(200, {"success": True})

            def do_GET(self) -> None:  # noqa: N802
                path = urlparse(self.path).path
                fake.requests.append(f"GET {path}")
                parts = [p for p in path.split("/") if p]
                if parts == ["download", "export.zip"]:
                    return self._download()
                if not self._authorised():
                    return None
                ws, proj, ver = fake.workspace, fake.project, str(fake.version)
                if parts == [ws]:
                    return self._json(200, {"workspace": {"name": ws, "url": ws, "projects": [fake._project()]}})
                if parts == [ws, proj]:
                    return self._json(
                        200,
                        {
                            "workspace": {"name": ws, "url": ws},
                            "project": fake._project(),
                            "versions": [fake._version()],
                        },
                    )
                if parts == [ws, proj, ver]:
                    return self._json(
                        200,
                        {"workspace": {"name": ws}, "project": fake._project(), "version": fake._version()},
                    )
                if parts == [ws, proj, ver, "coco"]:
                    return self._json(200, {"export": {"link": f"{fake.url}/download/export.zip"}})
                # like many real servers, the 404 echoes the request line, query (and key) included
                return self._json(404, {"error": {"message": f"not found: {self.path}"}})

            def _download(self) -> None:
                fake.downloads += 1
                data = fake.zip_bytes
                if fake.stall_s:  # a slow link: the client is mid-download for a while
                    self.send_response(200)
                    self.send_header("Content-Type", "application/zip")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[:1024])
                    self.wfile.flush()
                    time.sleep(fake.stall_s)
                    self.wfile.write(data[1024:])
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fake.truncate_next > 0:
                    fake.truncate_next -= 1
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)

        return Handler
