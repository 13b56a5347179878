"""The prediction service over real HTTP (uvicorn on loopback) on a real registry: the answer
contract, every refusal with its status and message, keys, rate limits, readiness, metrics,
batching, and ``drywall predict --server`` writing what local prediction writes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from drywall_core.base.config import Settings
from drywall_core.data.masks import decode_rle
from drywall_core.model.measure import measure_mask
from drywall_core.serve.app import Service, create_app
from drywall_core.serve.keys import KeyRing, hash_key
from drywall_core.stages.context import Context, MemoryEvents, QuietReporter
from tests.integration.serving import DRYWALL, ThreadServer, decoder_artifact, publish_version, wait_for

pytestmark = pytest.mark.integration

KEY = "test-key-7f3a"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _photos(synthetic_exports: list[Path], n: int = 3) -> list[Path]:
    return sorted(synthetic_exports[0].rglob("*.jpg"))[:n]


@pytest.fixture(scope="module")
def registry_home(tmp_path_factory, tiny_model_dir, synthetic_exports):
    """A local registry whose champion v1 is the tiny model, published with its warm-up set."""
    root = tmp_path_factory.mktemp("serve")
    settings = Settings(home=root / "home")
    ctx = Context(settings, QuietReporter(), MemoryEvents())
    art = decoder_artifact(tiny_model_dir, root / "v1")
    ctx.models.promote(publish_version(ctx.models, art, _photos(synthetic_exports), ctx.prompts, root, "v1"), None)
    keys = root / "keys.txt"
    keys.write_text(f"# the test's key\n{hash_key(KEY)}\n\n")
    return settings, keys


def _service(settings: Settings, keys: Path | None, **serve) -> Service:
    cfg = settings.serve.model_copy(update={"poll_s": 0.5, **serve})
    ctx = Context(settings, QuietReporter(), MemoryEvents())
    return Service(ctx, cfg, KeyRing.from_file(keys) if keys else None)


@pytest.fixture(scope="module")
def served(registry_home):
    settings, keys = registry_home
    with ThreadServer(create_app(_service(settings, keys, max_wait_ms=40))) as srv:
        wait_for(lambda: httpx.get(srv.url + "/readyz").status_code == 200, 60, "the service to be ready")
        yield srv


def _post(url: str, data: bytes, name: str = "photo.jpg", prompts=("segment crack",), headers=None, extra=None, **kw):
    return httpx.post(
        url + "/v1/segment", headers={**AUTH, **(headers or {})}, files={"image": (name, data)},
        data={"prompt": list(prompts), **(extra or {})}, timeout=60, **kw,
    )  # fmt: skip


def _jpeg(im: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=save.pop("format", "JPEG"), **save)
    return buf.getvalue()


def test_segment_answers_the_contract(served, synthetic_exports) -> None:
    photo = _photos(synthetic_exports)[0]
    r = _post(served.url, photo.read_bytes(), prompts=["segment crack", "segment taping area"])
    assert r.status_code == 200, r.text
    body = r.json()
    w, h = Image.open(photo).size
    assert (body["width"], body["height"], body["model_version"]) == (w, h, "v1")
    import hashlib

    assert body["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    assert [x["prompt"] for x in body["results"]] == ["segment crack", "segment taping area"]
    for x in body["results"]:
        mask = decode_rle(x["mask"])
        assert mask.shape == (h, w) and x["mask"]["size"] == [h, w]
        assert abs(mask.mean() - x["foreground_fraction"]) < 1e-4
        assert 0.5 <= x["mean_confidence"] <= 1 and 0 <= x["uncertain_share"] <= 1 and x["threshold"] == 0.5
    assert {"read", "queued", "model", "encode", "total"} <= set(body["timings_ms"])
    crack, taping = body["results"]
    expected = measure_mask(decode_rle(crack["mask"])).to_dict()  # what `drywall measure` says of the mask
    assert crack["measurements"] == {k: v for k, v in expected.items() if k not in ("file", "width", "height")}
    assert taping.get("measurements") is None  # taping is measured by its share: foreground_fraction
    scaled = _post(served.url, photo.read_bytes(), extra={"px_per_mm": "2.5"}).json()["results"][0]["measurements"]
    assert scaled["total_length_mm"] == pytest.approx(scaled["total_length_px"] / 2.5, abs=1e-3)
    assert _post(served.url, photo.read_bytes(), extra={"px_per_mm": "-1"}).status_code == 422

    png = _post(served.url, photo.read_bytes(), headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["x-model-version"] == "v1"
    got = np.asarray(Image.open(io.BytesIO(png.content)))
    assert got.shape == (h, w) and set(np.unique(got)) <= {0, 255}
    assert np.array_equal(got > 0, decode_rle(body["results"][0]["mask"]) > 0)

    poly = _post(served.url, photo.read_bytes(), params={"mask_format": "polygons"}).json()["results"][0]["mask"]
    xs = [v for ring in poly["polygons"] for v in ring[0::2]]
    assert poly["polygons"] and min(xs) >= 0 and max(xs) <= w  # COCO order, inside the photo


def test_photos_as_people_take_them(served) -> None:
    """EXIF-rotated, 16-bit and CMYK photos are answered at the size they are displayed."""
    exif = Image.Image.getexif(Image.new("RGB", (1, 1)))
    exif[0x0112] = 6  # stored sideways: displayed rotated by 90 degrees
    sideways = _jpeg(Image.new("RGB", (80, 48), (120, 110, 100)), exif=exif.tobytes())
    r = _post(served.url, sideways)
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (48, 80)
    assert r.json()["results"][0]["mask"]["size"] == [80, 48]
    deep = Image.fromarray(np.arange(64 * 40, dtype=np.uint16).reshape(40, 64) * 20)  # 16-bit grey
    assert _post(served.url, _jpeg(deep, format="PNG"), "deep.png").status_code == 200
    cmyk = _jpeg(Image.new("CMYK", (50, 30), (10, 20, 30, 0)))
    r = _post(served.url, cmyk, "cmyk.jpg")
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (50, 30)


def test_each_bad_request_gets_its_status_and_a_named_fault(served, registry_home, synthetic_exports) -> None:
    photo = _photos(synthetic_exports)[0].read_bytes()
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0))]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    tiff = io.BytesIO()
    frames[0].save(tiff, format="TIFF", save_all=True, append_images=frames[1:])
    bomb = io.BytesIO()  # 81 megapixels of nothing: 80 KB on the wire, 243 MB once decoded as RGB
    Image.new("1", (9000, 9000)).save(bomb, format="PNG", optimize=True)
    cases = [
        (_post(served.url, b"", "empty.jpg"), 400, "image 'empty.jpg': empty file"),
        (_post(served.url, photo[: len(photo) // 3], "cut.jpg"), 400, "corrupt or truncated"),
        (_post(served.url, b"not a photo at all", "notes.txt"), 415, "not an image"),
        (_post(served.url, gif.getvalue(), "anim.gif"), 415, "animated or multi-page image (2 frames)"),
        (_post(served.url, tiff.getvalue(), "pages.tif"), 415, "animated or multi-page image (2 frames)"),
        (_post(served.url, bomb.getvalue(), "bomb.png"), 413, "9000x9000 over the 64000000-pixel limit"),
        (_post(served.url, photo, prompts=[f"segment thing {i}" for i in range(9)]), 422, "9 given, at most 8"),
        (_post(served.url, photo, prompts=["segment " + "x" * 300]), 422, "at most 200"),
        (_post(served.url, photo, prompts=["   "]), 422, "prompt: empty"),
        (_post(served.url, photo, prompts=[" ".join("qz" * 48)]), 422, "tokens; the model takes at most"),
        (_post(served.url, photo, prompts=["a", "b"], headers={"Accept": "image/png"}), 422, "answers one prompt"),
        (_post(served.url, photo, params={"mask_format": "svg"}), 422, "mask_format"),
        (httpx.post(served.url + "/v1/segment", headers=AUTH, data={"prompt": "segment crack"}), 422, "image: Field"),
        (httpx.post(served.url + "/v1/segment", headers=AUTH, files={"image": ("a.jpg", photo)}), 422, "prompt"),
        (httpx.post(served.url + "/v1/segment", headers=AUTH, content=b"{}"), 422, "Field required"),
    ]
    for r, status, message in cases:
        assert r.status_code == status, (message, r.status_code, r.text)
        assert message in r.json()["error"], (message, r.json())
        assert "\n" not in r.json()["error"]

    settings, keys = registry_home
    tight = settings.model_copy(update={"max_image_pixels": 32 * 32})
    with ThreadServer(create_app(_service(tight, keys, max_body_bytes=4096))) as small:
        wait_for(lambda: httpx.get(small.url + "/readyz").status_code == 200, 60, "ready")
        big = _post(small.url, _jpeg(Image.new("RGB", (40, 40))), "big.jpg")
        assert big.status_code == 413 and "40x40 over the 1024-pixel limit" in big.json()["error"], big.text
        body = _post(small.url, photo, "large.jpg")
        assert body.status_code == 413 and "4096-byte limit" in body.json()["error"]
        boundary = "drywall-test-boundary"
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nsegment crack\r\n'.encode(),
                 f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'.encode(),
                 b"x" * 3000, b"x" * 3000, f"\r\n--{boundary}--\r\n".encode()]  # fmt: skip
        chunked = httpx.post(  # no Content-Length: the limit holds as the body streams in
            small.url + "/v1/segment", content=iter(parts),
            headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )  # fmt: skip
        assert chunked.status_code == 413 and "4096-byte limit" in chunked.json()["error"], chunked.text


def test_keys_guard_every_model_route(served, registry_home, tmp_path) -> None:
    assert httpx.get(served.url + "/healthz").json() == {"status": "alive"}
    assert httpx.get(served.url + "/readyz").json() == {"status": "ready", "version": "v1"}
    assert httpx.get(served.url + "/metrics").status_code == 200
    for headers, why in (({}, "missing"), ({"Authorization": "Bearer wrong"}, "not a valid key"),
                         ({"Authorization": f"Basic {KEY}"}, "not a valid key")):  # fmt: skip
        r = httpx.get(served.url + "/v1/models", headers=headers)
        assert r.status_code == 401 and why in r.json()["error"] and r.headers["www-authenticate"] == "Bearer"
        assert _post(served.url, b"x", headers={"Authorization": headers.get("Authorization", "")}).status_code == 401
    assert httpx.get(served.url + "/v1/models", headers=AUTH).json()["serving"]["version"] == "v1"

    settings, keys = registry_home
    env = {"DRYWALL_HOME": str(settings.home), "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    r = subprocess.run([DRYWALL, "serve"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no API keys: set DRYWALL_SERVE__API_KEYS_FILE" in r.stderr, r.stderr
    bad = tmp_path / "keys.txt"
    bad.write_text(f"{hash_key('a')}\nplain-text-key\n")
    r = subprocess.run([DRYWALL, "serve"], env={**env, "DRYWALL_SERVE__API_KEYS_FILE": str(bad)},
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and f"{bad}:2: not a 'sha256:<64 hex digits>' line" in r.stderr, r.stderr

    made = tmp_path / "made" / "keys.txt"
    r = subprocess.run([DRYWALL, "api-key", "new", "--file", str(made)], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and made.stat().st_mode & 0o777 == 0o600
    assert KeyRing.from_file(made).identify(f"Bearer {r.stdout.strip()}") is not None
    assert r.stdout.strip() not in made.read_text()  # stored hashed only


def test_rate_limit_answers_429_with_retry_after(registry_home, synthetic_exports) -> None:
    settings, keys = registry_home
    with ThreadServer(create_app(_service(settings, keys, rate_burst=3, rate_per_min=6))) as srv:
        wait_for(lambda: httpx.get(srv.url + "/readyz").status_code == 200, 60, "ready")
        codes = [httpx.get(srv.url + "/v1/models", headers=AUTH).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = httpx.get(srv.url + "/v1/models", headers=AUTH)
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 10 and "6 requests a minute" in r.text
        assert httpx.get(srv.url + "/healthz").status_code == 200  # probes are never rate limited
        assert 'drywall_serve_refused_requests_total{reason="rate"} 2.0' in httpx.get(srv.url + "/metrics").text


def test_not_ready_without_a_champion_then_ready_once_one_is_promoted(tmp_path, tiny_model_dir, synthetic_exports):
    settings = Settings(home=tmp_path / "empty")
    svc = _service(settings, None)
    with ThreadServer(create_app(svc)) as srv:
        r = httpx.get(srv.url + "/readyz")
        assert r.status_code == 503 and "no champion yet" in r.json()["error"] and r.headers["retry-after"]
        seg = _post(srv.url, _photos(synthetic_exports)[0].read_bytes())
        assert seg.status_code == 503 and "no model serves yet" in seg.json()["error"]
        art = decoder_artifact(tiny_model_dir, tmp_path / "a")
        v = publish_version(svc.ctx.models, art, _photos(synthetic_exports, 1), svc.ctx.prompts, tmp_path, "va")
        svc.ctx.models.promote(v, None)
        wait_for(lambda: httpx.get(srv.url + "/readyz").status_code == 200, 30, "ready after the promotion")
        assert _post(srv.url, _photos(synthetic_exports)[0].read_bytes()).json()["model_version"] == "va"


def test_concurrent_requests_share_a_batch_and_metrics_say_so(served, synthetic_exports) -> None:
    photos = [p.read_bytes() for p in _photos(synthetic_exports, 8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: _post(served.url, b).json(), photos))
    sizes = [a["timings_ms"]["batch_size"] for a in answers]
    assert max(sizes) > 1, sizes  # eight at once, 40 ms to gather: some shared a forward pass
    single = [_post(served.url, b).json() for b in photos[:2]]
    for a, b in zip(answers[:2], single, strict=True):  # batched or alone, the same masks
        assert a["results"][0]["mask"] == b["results"][0]["mask"]
    text = httpx.get(served.url + "/metrics").text
    assert 'drywall_serve_model_info{version="v1"} 1.0' in text
    assert "drywall_serve_batch_size_count" in text and "drywall_serve_queue_depth" in text
    assert 'drywall_serve_requests_total{route="/v1/segment",status="200"}' in text
    assert 'drywall_serve_request_seconds_bucket{le="0.5",route="/v1/segment"}' in text


def test_openapi_documents_the_upload_and_the_refusals(served) -> None:
    schema = httpx.get(served.url + "/openapi.json").json()
    op = schema["paths"]["/v1/segment"]["post"]
    form = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    ref = form["$ref"].split("/")[-1] if "$ref" in form else None
    props = schema["components"]["schemas"][ref]["properties"] if ref else form["properties"]
    assert {"image", "prompt"} <= set(props)
    assert {"200", "400", "401", "413", "415", "422", "429", "503"} <= set(op["responses"])
    assert "image/png" in op["responses"]["200"]["content"]
    assert {"/v1/models", "/healthz", "/readyz", "/metrics", "/v1/gallery"} <= set(schema["paths"])


def test_predict_with_server_writes_what_local_prediction_writes(served, registry_home, synthetic_exports, tmp_path):
    settings, _ = registry_home
    photos = [str(p) for p in _photos(synthetic_exports, 3)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    env = {"DRYWALL_HOME": str(settings.home), "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    remote = subprocess.run(
        [DRYWALL, "predict", *photos, str(broken), "--prompt", "segment crack", "--out", str(tmp_path / "remote"),
         "--server", served.url], env={**env, "DRYWALL_API_KEY": KEY}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert (
        remote.returncode == 1
        and "broken.jpg: cannot read image (415 image 'broken.jpg': not an image" in remote.stderr
    )
    local = subprocess.run(
        [DRYWALL, "predict", *photos, "--prompt", "segment crack", "--out", str(tmp_path / "local"),
         "--model", "registry:champion"], env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "remote").iterdir()) and len(names) == 3
    for name in names:
        a = np.asarray(Image.open(tmp_path / "local" / name))
        b = np.asarray(Image.open(tmp_path / "remote" / name))
        assert a.shape == b.shape and np.array_equal(a, b), name
    nokey = subprocess.run(
        [DRYWALL, "predict", photos[0], "--prompt", "segment crack", "--out", str(tmp_path / "x"), "--server",
         served.url], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert nokey.returncode == 1 and "401 API key missing" in nokey.stderr


def test_capture_and_shadow_close_the_loop_from_live_traffic(tmp_path, tiny_model_dir, synthetic_exports) -> None:
    """Capture stores each photo sent once, named by its content, where the field stages look;
    the shadow runs sampled requests on the newest version after the answer and records agreement."""
    from drywall_core.field.drift import IMAGE_EXTENSIONS
    from drywall_core.field.monitoring import TAG_SHADOW, open_workspace
    from drywall_core.field.predictions import field_images

    settings = Settings(home=tmp_path / "home")
    ctx = Context(settings, QuietReporter(), MemoryEvents())
    photos = _photos(synthetic_exports, 3)
    everywhere = decoder_artifact(tiny_model_dir, tmp_path / "v1", bias=8.0)  # every pixel foreground
    nowhere = decoder_artifact(tiny_model_dir, tmp_path / "v2", bias=-8.0)  # none
    ctx.models.promote(publish_version(ctx.models, everywhere, photos[:1], ctx.prompts, tmp_path, "v1"), None)
    publish_version(ctx.models, nowhere, photos[:1], ctx.prompts, tmp_path, "v2")  # published after: the challenger
    svc = _service(settings, None, capture=True, shadow_share=1.0, shadow_flush=2)
    with ThreadServer(create_app(svc)) as srv:
        wait_for(lambda: httpx.get(srv.url + "/readyz").status_code == 200, 60, "ready")
        wait_for(lambda: httpx.get(srv.url + "/v1/models").json()["shadow"]["challenger"] is None
                 and svc.follower.challenger is not None, 60, "the challenger")  # fmt: skip
        sent = [*photos, photos[0]]  # the first photo twice
        for p in sent:
            r = _post(srv.url, p.read_bytes(), name="../../escape.jpg", prompts=["segment crack", "segment wall"])
            assert r.status_code == 200 and r.json()["model_version"] == "v1"  # the challenger never answers
        models = wait_for(lambda: (m := httpx.get(srv.url + "/v1/models").json())["shadow"]["requests"] == 4 and m,
                          60, "four shadow comparisons")  # fmt: skip
        metrics = httpx.get(srv.url + "/metrics").text
    assert models["shadow"]["challenger"] == "v2" and models["captured"] == 3
    assert models["shadow"]["agreement"] == {
        "segment crack": 0.0
    }  # all vs nothing; 'segment wall' is no registry prompt
    assert 'drywall_serve_shadow_agreement_count{prompt="segment crack"} 4.0' in metrics
    assert "drywall_serve_captured_total 3.0" in metrics
    import hashlib

    kept = sorted(p for p in (settings.field_images_dir / "served").rglob("*") if p.is_file())
    shas = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in photos)
    assert sorted(p.stem for p in kept if p.suffix == ".jpg") == shas, "once per photo, named by its sha256"
    assert all(p.resolve().is_relative_to(settings.field_images_dir) for p in kept)
    meta = json.loads(next(p for p in kept if p.suffix == ".json").read_text())
    assert meta["model_version"] == "v1" and meta["results"][0]["prompt"] == "segment crack"
    assert {im.sha256 for im in field_images(settings.field_images_dir, IMAGE_EXTENSIONS)} == set(shas)
    ws = open_workspace(str(settings.evidently_root))
    (project,) = [p for p in ws.list_projects() if p.name == settings.model_name]
    runs = [ws.get_run(project.id, r) for r in ws.list_runs(project.id)]
    assert len(runs) == 2 and all(TAG_SHADOW in r.tags for r in runs), "two runs of two comparisons"
