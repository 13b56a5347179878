"""The prediction service's HTTP face: FastAPI on uvicorn, one process per host, stateless.

Everything it serves comes from the model registry in the artifact store; a replica behind a load
balancer needs nothing from its neighbours. The request and answer shapes are the contract in
ARCHITECTURE.md (Prediction service contract). Every refusal is JSON ``{"error": "<one line>"}``
with its status; bad input never gets a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from drywall_core.base.config import ServeConfig
from drywall_core.base.errors import InputError
from drywall_core.serve.answers import MASK_FORMATS, MaskFormat, Refused, Scale, png_bytes, read_photo, result
from drywall_core.serve.batching import Answered, Batcher, NotReady
from drywall_core.serve.follow import Follower, Refusal, Serving
from drywall_core.serve.keys import KeyRing, RateLimiter
from drywall_core.serve.live import Capture, Shadow
from drywall_core.serve.metrics import ServeMetrics
from drywall_core.stages.context import Context

log = logging.getLogger(__name__)

OPEN_PATHS = ("/", "/healthz", "/readyz", "/docs", "/openapi.json", "/favicon.ico")


# -- the answer shapes (documented in the OpenAPI schema) -------------------------------------


class Mask(BaseModel):
    size: list[int]
    counts: str | None = None  # COCO compressed RLE (the default)
    png_base64: str | None = None  # mask_format=png
    polygons: list[list[float]] | None = None  # mask_format=polygons


class CrackSize(BaseModel):
    length_px: float
    max_width_px: float
    mean_width_px: float
    area_px: int
    bbox: list[int]  # x, y, width, height
    length_mm: float | None = None  # *_mm: with a scale (px_per_mm) only
    max_width_mm: float | None = None
    mean_width_mm: float | None = None


class Measurements(BaseModel):
    """A crack prompt's mask measured (the `drywall measure` contract, without `file`)."""

    n_cracks: int
    total_length_px: float
    max_width_px: float
    area_share: float
    cracks: list[CrackSize]
    specks: int
    px_per_mm: float | None = None
    total_length_mm: float | None = None
    max_width_mm: float | None = None


class PromptResult(BaseModel):
    prompt: str
    mask: Mask
    foreground_fraction: float
    mean_confidence: float
    uncertain_share: float
    threshold: float
    measurements: Measurements | None = None  # crack prompts (the dataset registry's `measure: lines`)


class SegmentAnswer(BaseModel):
    model_version: str
    width: int
    height: int
    sha256: str
    results: list[PromptResult]
    timings_ms: dict[str, float]


class ServingInfo(BaseModel):
    version: str
    since: str
    source: str
    warmup: str


class RefusedVersion(BaseModel):
    version: str
    reason: str
    kind: str
    at: str


class ShadowInfo(BaseModel):
    challenger: str | None
    share: float
    requests: int
    dropped: int
    agreement: dict[str, float]  # prompt -> mean mask IoU with the champion's answers


class ModelsAnswer(BaseModel):
    serving: ServingInfo | None
    refused: list[RefusedVersion]
    following: str
    state: str
    prompts: list[str]
    shadow: ShadowInfo | None = None
    captured: int | None = None  # photos stored since start (DRYWALL_SERVE__CAPTURE), else null


class ErrorAnswer(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorAnswer, "description": what}
    for code, what in {
        400: "empty, corrupt or truncated photo",
        401: "no valid API key (Authorization: Bearer <key>)",
        413: "body over DRYWALL_SERVE__MAX_BODY_BYTES, or photo over DRYWALL_MAX_IMAGE_PIXELS",
        415: "not an image, or not one still photo",
        422: "missing field, too many or too long prompts, a prompt the model cannot take",
        429: "over the key's rate limit (Retry-After says when to retry)",
        503: "no warmed model serves yet",
    }.items()
}


# -- the service ------------------------------------------------------------------------------


@dataclass
class Service:
    """The follower, the batcher and the limits of one serving process."""

    ctx: Context
    cfg: ServeConfig
    keys: KeyRing | None  # None: --insecure-no-auth
    metrics: ServeMetrics = field(default_factory=ServeMetrics)
    follower: Follower = field(init=False)
    batcher: Batcher = field(init=False)
    limiter: RateLimiter = field(init=False)
    stop: threading.Event = field(default_factory=threading.Event)
    listeners: list[Callable[[Follower, threading.Event], None]] = field(default_factory=list)
    capture: Capture | None = field(init=False, default=None)
    shadow: Shadow | None = field(init=False, default=None)
    _lines: dict[str, bool] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        m = self.metrics
        self.follower = Follower(
            self.ctx,
            self.cfg,
            on_swap=lambda new, old: m.serving(new.version, old.version if old else None),
            on_refuse=lambda r: m.refused_versions.labels(r.kind).inc(),
            on_error=lambda _exc: m.follow_errors.inc(),
        )
        self.limiter = RateLimiter(self.cfg.rate_per_min, self.cfg.rate_burst)
        self.batcher = Batcher(
            lambda: self.follower.current,
            self.cfg.max_batch,
            self.cfg.max_wait_ms,
            on_batch=m.batch.observe,
            on_depth=m.queue.set,
        )
        if self.cfg.capture:
            self.capture = Capture(self.ctx, self.cfg, lambda: self.field_bucket, on_stored=m.captured.inc)
        if self.cfg.shadow_share > 0:
            self.shadow = Shadow(
                self.ctx, self.cfg, lambda: self.follower.challenger,
                on_row=lambda prompt, score: m.shadow.labels(prompt).observe(score),
            )  # fmt: skip

    def lines(self, prompt: str) -> bool:
        """Whether answers for ``prompt`` carry crack measurements (the dataset registry says)."""
        if prompt not in self._lines:
            self._lines[prompt] = self.ctx.datasets.measures_lines(prompt)
        return self._lines[prompt]

    def start(self) -> None:
        follow = threading.Thread(target=self.follower.follow, args=(self.stop,), name="drywall-follow", daemon=True)
        follow.start()
        for listen in self.listeners:
            threading.Thread(target=listen, args=(self.follower, self.stop), name="drywall-events", daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.follower.nudge()
        self.batcher.close()
        for part in (self.capture, self.shadow):
            if part is not None:
                part.close()

    def after_answer(
        self, data: bytes, digest: str, fmt: str | None, photo: Any, answered: Answered, results: list[dict[str, Any]]
    ) -> None:
        """Capture and shadow, off the answer's path: each only queues (never blocks, never raises)."""
        if self.capture is not None:
            summary = {
                "model_version": answered.serving.version,
                "width": photo.size[0],
                "height": photo.size[1],
                "results": [{k: v for k, v in r.items() if k != "mask"} for r in results],
            }
            self.capture.offer(data, digest, fmt, summary)
        if self.shadow is None:
            return
        known = set(self.ctx.prompts)  # the registry's prompts only: bounded metrics and memory
        loaded = answered.serving.loaded
        masks = {p: m >= loaded.threshold_for(p) for p, m in answered.maps.items() if p in known}
        if masks:
            self.shadow.offer(photo, masks, answered.serving.version)

    @functools.cached_property
    def field_bucket(self) -> Any:
        """One S3 client for the field photos in the bucket (the gallery's and the capture's)."""
        from drywall_core.base.storage import s3_client_from

        return s3_client_from(self.ctx.settings)

    @property
    def following(self) -> str:
        return f"version {self.cfg.version} (pinned)" if self.cfg.version else f"champion of {self.follower.source}"


def shadow_info(s: Service) -> ShadowInfo | None:
    if s.shadow is None:
        return None
    st = s.shadow.stats
    return ShadowInfo(challenger=st.version, share=s.cfg.shadow_share, requests=st.requests, dropped=st.dropped,
                      agreement=st.agreement)  # fmt: skip


def check_prompts(prompts: list[str], cfg: ServeConfig) -> list[str]:
    cleaned = [" ".join(p.split()) for p in prompts]
    if not cleaned or any(not p for p in cleaned):
        raise Refused(422, "prompt: empty; send one or more text prompts such as 'segment crack'")
    if len(cleaned) > cfg.max_prompts:
        raise Refused(422, f"prompt: {len(cleaned)} given, at most {cfg.max_prompts} per request")
    long = next((p for p in cleaned if len(p) > cfg.max_prompt_chars), None)
    if long:
        raise Refused(422, f"prompt '{long[:40]}...': {len(long)} characters, at most {cfg.max_prompt_chars}")
    return list(dict.fromkeys(cleaned))


def retry_after(cfg: ServeConfig) -> dict[str, str]:
    return {"Retry-After": str(max(1, int(cfg.poll_s)))}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


# -- the guard in front of /v1: keys, rate limits, body size ----------------------------------


class Guard:
    """Pure ASGI middleware: a request without a valid key, over its rate or its body limit is
    answered before its body is read (a 25 MB upload without a key costs the service nothing)."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(("/v1/", "/metrics")):
            return await self.app(scope, receive, send)
        s, route, started = self.service, self._route(scope["path"]), time.perf_counter()
        status = 500

        async def noted(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._guarded_call(scope, receive, noted)
        finally:
            s.metrics.latency.labels(route).observe(time.perf_counter() - started)
            s.metrics.requests.labels(route, str(status)).inc()

    async def _guarded_call(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Any) -> None:
        s, headers = self.service, {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers) if self._guarded(scope["path"]) else None
        if refusal is not None:
            s.metrics.refused.labels(refusal[0]).inc()
            return await refusal[1](scope, receive, send)
        limit, seen = s.cfg.max_body_bytes, 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                s.metrics.refused.labels("size").inc()
                raise StarletteHTTPException(413, f"request body over the {limit}-byte limit")
            return message

        return await self.app(scope, counted, send)

    def _guarded(self, path: str) -> bool:
        if path == "/metrics":
            return not self.service.cfg.metrics_open
        return path.startswith("/v1/")

    @staticmethod
    def _route(path: str) -> str:
        return path if path in ("/v1/segment", "/v1/models", "/v1/gallery", "/metrics") else "/v1/other"

    def _refusal(self, scope: dict, headers: dict[str, str]) -> tuple[str, JSONResponse] | None:
        s = self.service
        if s.keys is not None:
            who = s.keys.identify(headers.get("authorization"))
            if who is None:
                why = "missing" if not headers.get("authorization") else "not a valid key"
                return "auth", error(
                    401, f"API key {why}: send Authorization: Bearer <key>", {"WWW-Authenticate": "Bearer"}
                )
        else:
            who = "client:" + str((scope.get("client") or ("?",))[0])
        wait = s.limiter.take(who)
        if wait > 0:
            retry = max(1, int(wait + 0.999))
            return "rate", error(
                429,
                f"rate limit of {s.cfg.rate_per_min:g} requests a minute; retry in {retry} s",
                {"Retry-After": str(retry)},
            )
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > s.cfg.max_body_bytes:
            return "size", error(413, f"request body of {length} bytes over the {s.cfg.max_body_bytes}-byte limit")
        return None


# -- the application --------------------------------------------------------------------------


def create_app(service: Service) -> FastAPI:
    s, cfg = service, service.cfg

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        service.close()

    app = FastAPI(
        title="drywall-qa prediction service",
        version="1",
        description="Text-prompted segmentation of drywall photos by the registry's champion CLIPSeg. "
        "Send `Authorization: Bearer <key>` to every /v1 route.",
        lifespan=lifespan,
    )

    @app.exception_handler(Refused)
    async def _refused(_r: Request, exc: Refused) -> JSONResponse:
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("body", "query"))
        hint = "; send multipart fields 'image' (a photo) and 'prompt'" if where in ("image", "prompt") else ""
        return error(422, f"{where or 'request'}: {first.get('msg', 'invalid')}{hint}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(resources.files("drywall_core.serve").joinpath("static/index.html").read_text())

    @app.get("/healthz", summary="Alive")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", summary="Ready: a warmed model serves", responses={503: ERRORS[503]})
    def readyz() -> Response:
        serving = s.follower.current
        if serving is None:
            return error(503, f"not ready: {s.follower.state}", retry_after(cfg))
        return JSONResponse({"status": "ready", "version": serving.version})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        return Response(s.metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", response_model=ModelsAnswer, summary="The version serving and those refused")
    def models() -> ModelsAnswer:
        cur: Serving | None = s.follower.current
        refused: list[Refusal] = list(s.follower.refused.values())
        return ModelsAnswer(
            serving=ServingInfo(version=cur.version, since=cur.since, source=cur.source, warmup=cur.warmup)
            if cur
            else None,
            refused=[RefusedVersion(version=r.version, reason=r.reason, kind=r.kind, at=r.at) for r in refused],
            following=s.following,
            state=s.follower.state,
            prompts=s.ctx.prompts,
            shadow=shadow_info(s),
            captured=s.capture.stored if s.capture else None,
        )

    @app.post(
        "/v1/segment",
        response_model=SegmentAnswer,
        summary="Masks of one photo for one or more prompts",
        responses={
            200: {
                "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                "description": "JSON (default), or with `Accept: image/png` and one prompt the mask as a PNG",
            },
            **ERRORS,
        },
    )
    async def segment(
        request: Request,
        image: Annotated[UploadFile, File(description="The photo (JPEG, PNG, WebP, TIFF, BMP).")],
        prompt: Annotated[list[str], Form(description="A text prompt, e.g. 'segment crack'; repeat for more.")],
        mask_format: Annotated[MaskFormat, Query(description=f"Mask encoding: {', '.join(MASK_FORMATS)}.")] = "rle",
        px_per_mm: Annotated[
            float | None,
            Form(gt=0, le=1e6, description="This photo's scale, pixels per mm: crack sizes in mm too."),
        ] = None,
    ) -> Response:
        t0 = time.perf_counter()
        prompts = check_prompts(prompt, cfg)
        measure = s.ctx.settings.measure
        scale = Scale(px_per_mm if px_per_mm is not None else measure.px_per_mm, measure.min_area_px)
        wants_png = "image/png" in request.headers.get("accept", "")
        if wants_png and len(prompts) != 1:
            raise Refused(422, f"Accept: image/png answers one prompt; {len(prompts)} given")
        data = await image.read()
        photo, digest, fmt = await run_in_threadpool(
            read_photo, data, image.filename or "", s.ctx.settings.max_image_pixels
        )
        t1 = time.perf_counter()
        if s.follower.current is None:
            raise Refused(503, f"no model serves yet: {s.follower.state}", retry_after(cfg))
        try:
            answered: Answered = await asyncio.wrap_future(s.batcher.submit(photo, prompts))
        except NotReady as exc:
            raise Refused(503, str(exc), retry_after(cfg)) from None
        except InputError as exc:
            raise Refused(422, str(exc)) from None
        loaded = answered.serving.loaded
        t2 = time.perf_counter()
        if wants_png:
            p = prompts[0]
            body = await run_in_threadpool(lambda: png_bytes(answered.maps[p] >= loaded.threshold_for(p)))
            s.after_answer(data, digest, fmt, photo, answered, [])
            return Response(
                body,
                media_type="image/png",
                headers={"X-Model-Version": answered.serving.version, "X-Image-Sha256": digest},
            )
        results = await run_in_threadpool(
            lambda: [
                result(p, answered.maps[p], loaded.threshold_for(p), mask_format, scale if s.lines(p) else None)
                for p in prompts
            ]
        )
        t3 = time.perf_counter()
        s.after_answer(data, digest, fmt, photo, answered, results)
        timings = {
            "read": (t1 - t0) * 1000,
            "queued": answered.queued_ms,
            "model": answered.model_ms,
            "encode": (t3 - t2) * 1000,
            "total": (t3 - t0) * 1000,
            "batch_size": float(answered.batch_size),
        }
        return JSONResponse(
            {
                "model_version": answered.serving.version,
                "width": photo.size[0],
                "height": photo.size[1],
                "sha256": digest,
                "results": results,
                "timings_ms": {k: round(v, 2) for k, v in timings.items()},
            }
        )

    from drywall_core.serve.gallery import add_gallery

    add_gallery(app, s)
    app.add_middleware(Guard, service=s)  # outermost: refuses before anything reads the body
    return app
