"""The prediction page in a real browser: headless Chromium (Debian's package, driven by
Playwright) uploads a real photo to the service on loopback, waits for the overlay and checks that
the mask is the photo's size; the gallery shows the champion's field predictions. The screenshot is
written beside the test's files, and to docs/ with DRYWALL_UPDATE_DOCS=1."""

from __future__ import annotations

import os
import re
import shutil

import httpx
import pytest
from PIL import Image

from drywall_core.base.config import Settings
from drywall_core.serve.app import Service, create_app
from drywall_core.serve.keys import KeyRing, hash_key
from drywall_core.stages.context import Context, MemoryEvents, QuietReporter
from tests.conftest import REPO
from tests.integration.serving import ThreadServer, decoder_artifact, publish_version, wait_for

pytestmark = pytest.mark.integration

KEY = "page-key-55e1"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (make setup runs infra/ensure-chromium.sh)")
        pytest.skip("chromium is not installed: apt-get install chromium (infra/ensure-chromium.sh)")
    return found


def test_the_page_segments_a_real_photo_and_shows_the_gallery(tmp_path, tiny_model_dir, cracks_export) -> None:
    from playwright.sync_api import sync_playwright

    from drywall_core.field.predictions import field_images, predict_field, publish_predictions
    from drywall_core.model.runtime import load_for_inference

    browser_path = _chromium()
    settings = Settings(home=tmp_path / "home")
    ctx = Context(settings, QuietReporter(), MemoryEvents())
    photos = sorted((cracks_export / "valid").glob("*.jpg"))[:3]
    art = decoder_artifact(tiny_model_dir, tmp_path / "v1")
    ctx.models.promote(publish_version(ctx.models, art, photos[:1], ctx.prompts, tmp_path, "v1"), None)
    field = settings.field_images_dir / "sites" / "north"
    field.mkdir(parents=True)
    for p in photos:
        shutil.copy(p, field / p.name)
    run = predict_field(load_for_inference(art), field_images(settings.field_images_dir, {".jpg"}), ctx.prompts,
                        tmp_path / "field-out", "v1", progress=False)  # fmt: skip
    publish_predictions(ctx.store, "v1", run)
    keys = tmp_path / "keys.txt"
    keys.write_text(hash_key(KEY) + "\n")
    service = Service(ctx, settings.serve.model_copy(update={"poll_s": 0.5}), KeyRing.from_file(keys))
    photo = photos[0]
    width, height = Image.open(photo).size
    with ThreadServer(create_app(service)) as srv:
        wait_for(lambda: httpx.get(srv.url + "/readyz").status_code == 200, 60, "ready")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=browser_path, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            local = (srv.url, "blob:" + srv.url, "data:")  # no CDN: the page works offline
            page.on("request", lambda r: r.url.startswith(local) or errors.append(f"off-host request {r.url}"))
            page.goto(srv.url + "/")
            page.fill("#key", KEY)
            page.dispatch_event("#key", "change")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('serving v1')")
            # three photos, two prompts: six field predictions, least certain first
            page.wait_for_function("document.querySelectorAll('#gallery figure img.mask').length === 6")
            page.set_input_files("#file", str(photo))
            page.click("#go")
            page.wait_for_selector("#results figure.result img.mask", timeout=60_000)
            page.wait_for_function(
                "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            figure = page.locator("#results figure.result").first
            dims = figure.evaluate(
                "f => ({mask: [+f.dataset.maskWidth, +f.dataset.maskHeight],"
                " answer: [+f.dataset.photoWidth, +f.dataset.photoHeight],"
                " photo: [f.querySelector('img.photo').naturalWidth, f.querySelector('img.photo').naturalHeight],"
                " overlay: [f.querySelector('img.mask').naturalWidth, f.querySelector('img.mask').naturalHeight]})"
            )
            assert dims["mask"] == dims["answer"] == dims["photo"] == dims["overlay"] == [width, height], dims
            assert "segment crack" in figure.inner_text() and "model v1" in figure.inner_text()
            assert re.search(r"\d+ crack\(s\), \d+ px long, widest [\d.]+ px", figure.inner_text()), figure.inner_text()
            page.fill("#opacity", "20")
            page.dispatch_event("#opacity", "input")
            assert figure.locator("img.mask").evaluate("m => m.style.opacity") == "0.2"
            shot = tmp_path / "serve-page.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    assert not errors, errors
    assert Image.open(shot).size[0] == 1280
    if os.environ.get("DRYWALL_UPDATE_DOCS") == "1":
        shutil.copy(shot, REPO / "docs" / "serve-page.png")
