"""The page's gallery: the serving version's recent field predictions, least certain first.

Only photos and masks named by a row of the version's ``predictions/<version>/summary.parquet``
are served, looked up by the photo's sha256 -- a request never names a key or a path itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from drywall_core.base.fsutil import inside
from drywall_core.serve.answers import Refused

if TYPE_CHECKING:
    from drywall_core.serve.app import Service

MEDIA = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".bmp": "image/bmp",
}


class Gallery:
    """The serving version's summary, read when the gallery is listed and kept for the photo and
    mask requests the page then makes (a page of 24 items was 48 more reads of the whole summary)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._frames: dict[str, Any] = {}  # version -> its summary (None: no field predictions)

    def summary(self, refresh: bool = False) -> tuple[str, Any]:
        from drywall_core.field.predictions import read_summary

        cur = self.service.follower.current
        if cur is None:
            raise Refused(503, f"no model serves yet: {self.service.follower.state}")
        if refresh or cur.version not in self._frames:
            self._frames = {cur.version: read_summary(self.service.ctx.store, cur.version)}
        return cur.version, self._frames[cur.version]

    def row(self, sha256: str, prompt: str | None = None) -> tuple[str, Any]:
        """The summary row of a photo (and prompt); one fresh read before a photo is called unknown."""
        for refresh in (False, True):
            version, frame = self.summary(refresh)
            if frame is None or frame.empty:
                continue
            rows = frame[frame["sha256"] == sha256]
            if prompt is not None:
                rows = rows[rows["prompt"] == prompt]
            if not rows.empty:
                return version, rows.iloc[0]
        if frame is None or frame.empty:
            raise Refused(404, f"version {version} has no field predictions")
        raise Refused(404, f"no field prediction of version {version} for photo {sha256[:16]}")


def photo_bytes(service: Service, name: str) -> bytes:
    """A field photo by the name its summary row holds: an S3 key, or a path under the field folder."""
    s = service.ctx.settings
    if s.s3_bucket:
        return service.field_bucket.get_object(Bucket=s.s3_bucket, Key=name)["Body"].read()
    return inside(s.field_images_dir, name, "field image").read_bytes()


def add_gallery(app: FastAPI, service: Service) -> None:
    index = Gallery(service)

    @app.get("/v1/gallery", summary="Recent field predictions of the serving version, least certain first")
    def gallery(limit: int = Query(service.cfg.gallery_size, ge=0, le=200)) -> dict[str, Any]:
        from drywall_core.field.predictions import most_uncertain

        version, frame = index.summary(refresh=True)
        if frame is None or frame.empty:
            return {"version": version, "items": []}
        items = [
            {
                "image": r["image"],
                "sha256": r["sha256"],
                "prompt": r["prompt"],
                "width": int(r["width"]),
                "height": int(r["height"]),
                "uncertain_share": float(r["uncertain_share"]),
                "foreground_fraction": float(r["fg_fraction"]),
                "mean_confidence": float(r["mean_confidence"]),
                "predicted_at": str(r["predicted_at"]),
            }
            for _, r in most_uncertain(frame, limit).iterrows()
        ]
        return {"version": version, "items": items}

    @app.get("/v1/gallery/photo", summary="A gallery photo", response_class=Response)
    async def gallery_photo(sha256: str = Query(..., pattern="^[0-9a-f]{64}$")) -> Response:
        _, row = await run_in_threadpool(index.row, sha256)
        data = await run_in_threadpool(photo_bytes, service, str(row["image"]))
        return Response(data, media_type=MEDIA.get(Path(str(row["image"])).suffix.lower(), "application/octet-stream"))

    @app.get("/v1/gallery/mask", summary="A gallery mask (PNG)", response_class=Response)
    async def gallery_mask(sha256: str = Query(..., pattern="^[0-9a-f]{64}$"), prompt: str = Query(...)) -> Response:
        from drywall_core.field.predictions import predictions_key

        version, row = await run_in_threadpool(index.row, sha256, prompt)
        data = await run_in_threadpool(service.ctx.store.get_bytes, predictions_key(version, str(row["mask"])))
        return Response(data, media_type="image/png")
