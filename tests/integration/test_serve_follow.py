"""The prediction service follows the champion alias on the S3 registry, as ``drywall serve``
processes of their own (own DRYWALL_HOME: hosts that share only S3 and the Prefect API): under load
while the alias moves twice (a good version and one whose warm-up fails), as two replicas, and at
once on the promotion event from a real Prefect server."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from drywall_core.base.config import Settings
from drywall_core.serve.keys import hash_key
from drywall_core.stages.context import Context, MemoryEvents, QuietReporter
from tests.integration.serving import DRYWALL, ServeProcess, decoder_artifact, publish_version, wait_for

pytestmark = pytest.mark.integration

KEY = "follow-key-91c2"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Registry:
    """A model of its own on the shared S3 bucket with versions v1 (the tiny model), v2 (another
    decoder, its own warm-up set) and v3 (a third decoder published with v2's warm-up set: its masks
    where it would serve differ from the recorded ones)."""

    def __init__(self, s3_server, root: Path, tiny: Path, photos: list[Path], monkeypatch) -> None:
        for k, v in s3_server.env().items():
            monkeypatch.setenv(k, v)
        self.name = f"serve-{uuid.uuid4().hex[:8]}"
        field = f"{self.name}-field/"  # the bucket is shared with other tests: field photos of its own
        self.env = {**s3_server.env(), "DRYWALL_MODEL_NAME": self.name, "DRYWALL_FIELD_IMAGES_PREFIX": field}
        self.settings = Settings(home=root / "publisher", s3_bucket=s3_server.bucket,
                                 s3_endpoint_url=s3_server.endpoint, model_name=self.name,
                                 field_images_prefix=field)  # fmt: skip
        self.ctx = Context(self.settings, QuietReporter(), MemoryEvents())
        reg, prompts = self.ctx.models, self.ctx.prompts
        a1, a2 = decoder_artifact(tiny, root / "a1"), decoder_artifact(tiny, root / "a2", bias=-8.0)
        a3 = decoder_artifact(tiny, root / "a3", bias=8.0)
        publish_version(reg, a1, photos, prompts, root, "v1")
        publish_version(reg, a2, photos, prompts, root, "v2")
        publish_version(reg, a3, photos, prompts, root, "v3", warmup_from=a2)
        reg.promote("v1", None)
        self.keys = root / "keys.txt"
        self.keys.write_text(hash_key(KEY) + "\n")
        self.root = root

    def host(self, name: str, **settings: str) -> ServeProcess:
        env = {**self.env, "DRYWALL_HOME": str(self.root / name), "DRYWALL_SERVE__API_KEYS_FILE": str(self.keys),
               "HF_HUB_OFFLINE": "1", "DRYWALL_SERVE__RATE_PER_MIN": "1000000", **settings}  # fmt: skip
        return ServeProcess(env, self.root / f"{name}.log")

    def promote(self, version: str) -> None:
        self.ctx.models.promote(version, self.ctx.models.champion()[1], reason="test")


@pytest.fixture
def registry(s3_server, tmp_path, tiny_model_dir, synthetic_exports, monkeypatch) -> Registry:
    photos = sorted(synthetic_exports[0].rglob("*.jpg"))[:3]
    return Registry(s3_server, tmp_path, tiny_model_dir, photos, monkeypatch)


def _models(url: str) -> dict:
    return httpx.get(url + "/v1/models", headers=AUTH, timeout=10).json()


def _when(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_promotions_under_load_drop_no_request(registry: Registry, synthetic_exports) -> None:
    photo = sorted(synthetic_exports[0].rglob("*.jpg"))[0].read_bytes()
    host = registry.host("host", DRYWALL_SERVE__POLL_S="0.5", DRYWALL_SERVE__CAPTURE="true").start()
    try:
        assert host.wait_ready()["version"] == "v1"
        answers: list[tuple[float, float, int, str | None]] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(headers=AUTH, timeout=60) as client:
                while not stop.is_set():
                    t0 = time.time()
                    r = client.post(host.url + "/v1/segment", files={"image": ("p.jpg", photo)},
                                    data={"prompt": ["segment crack", "segment taping area"]})  # fmt: skip
                    version = r.json().get("model_version") if r.status_code == 200 else None
                    answers.append((t0, time.time(), r.status_code, version))

        threads = [threading.Thread(target=load, daemon=True) for _ in range(8)]  # concurrency 8
        for t in threads:
            t.start()
        wait_for(lambda: len(answers) >= 30, 60, "answers from v1")
        registry.promote("v2")
        swapped = wait_for(lambda: (m := _models(host.url))["serving"]["version"] == "v2" and m, 60, "the swap to v2")
        seen = len(answers)
        wait_for(lambda: len(answers) >= seen + 30, 60, "answers after the swap")
        registry.promote("v3")  # its warm-up fails: refused, v2 keeps serving
        refused = wait_for(lambda: [r for r in _models(host.url)["refused"] if r["version"] == "v3"], 60, "v3 refused")
        seen = len(answers)
        wait_for(lambda: len(answers) >= seen + 30, 60, "answers after the refusal")
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        host.stop()
    assert [a for a in answers if a[2] != 200] == [], "a request failed while the alias moved"
    assert all(a[3] in ("v1", "v2") for a in answers), {a[3] for a in answers}  # v3 never answers
    since = _when(swapped["serving"]["since"])
    late = [a for a in answers if a[0] > since]
    assert late and all(a[3] == "v2" for a in late), "an answer from v1 after the swap"
    assert {a[3] for a in answers if a[1] < since} == {"v1"}
    assert refused[0]["kind"] == "warmup" and "warm-up masks differ from the recorded ones" in refused[0]["reason"]
    log = host.log.read_text()
    assert "model version v3 refused (warmup)" in log and "still serving v2" in log
    # captured on S3 under the field-images prefix: the one photo sent, once, named by its content
    import hashlib

    from drywall_core.base.storage import s3_client_from

    s = registry.settings
    listed = s3_client_from(s).list_objects_v2(Bucket=s.s3_bucket, Prefix=f"{s.field_images_prefix}served/")
    names = sorted(o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", []))
    digest = hashlib.sha256(photo).hexdigest()
    assert names == [f"{digest}.jpg", f"{digest}.json"], names
    print(f"{len(answers)} answers at concurrency 8 while the alias moved twice; 0 failed")


def test_two_replicas_each_follow_the_alias(registry: Registry) -> None:
    hosts = [registry.host(f"replica-{i}", DRYWALL_SERVE__POLL_S="1").start() for i in range(2)]
    try:
        for h in hosts:
            assert h.wait_ready()["version"] == "v1"
        moved = time.time()
        registry.promote("v2")
        lags = []
        for h in hosts:
            m = wait_for(lambda h=h: (m := _models(h.url))["serving"]["version"] == "v2" and m, 30, f"{h.url} on v2")
            lags.append(_when(m["serving"]["since"]) - moved)
            assert m["serving"]["source"].endswith(f"/models/{registry.name}/versions/v2")
        metrics = [httpx.get(h.url + "/metrics").text for h in hosts]
    finally:
        for h in hosts:
            h.stop()
    # each replica saw the move at its next poll (1 s) and swapped once the download and warm-up were done
    assert all(lag < 1.0 + 10.0 for lag in lags), lags
    for text in metrics:
        assert 'drywall_serve_model_info{version="v2"} 1.0' in text and "drywall_serve_swaps_total 2.0" in text
    print("replica swap lags after the alias moved (s):", [round(x, 2) for x in lags])


def test_the_promotion_event_swaps_at_once_and_a_refusal_is_an_event(registry: Registry, prefect_api) -> None:
    from prefect.settings import PREFECT_API_URL

    from tests.integration.test_flows import _events

    api = PREFECT_API_URL.value()
    host = registry.host("evented", DRYWALL_SERVE__POLL_S="600", PREFECT_API_URL=api).start()
    try:
        host.wait_ready()
        wait_for(lambda: "following drywall.model.promoted" in host.log.read_text(), 60, "the event stream")
        env = {**host.env, "DRYWALL_HOME": str(registry.root / "operator")}
        moved = time.time()
        r = subprocess.run([DRYWALL, "registry", "promote", "v2", "--reason", "event test"], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        m = wait_for(lambda: (m := _models(host.url))["serving"]["version"] == "v2" and m, 60, "the evented swap")
        lag = _when(m["serving"]["since"]) - moved
        assert lag < 30, lag  # the poll is 600 s: only the event can have done it
        r = subprocess.run([DRYWALL, "registry", "promote", "v3"], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: _models(host.url)["refused"], 60, "v3 refused")
    finally:
        host.stop()
    sent = _events("drywall.serve.refused", lambda e: e["payload"].get("version") == "v3")
    assert sent and sent[0]["payload"]["kind"] == "warmup" and sent[0]["payload"]["serving"] == "v2"
    assert re.search(r"promotion event: .*'version': 'v2'", host.log.read_text())
    print(f"swap {lag:.2f} s after `drywall registry promote` (poll interval 600 s)")


def test_the_gallery_serves_field_predictions_from_the_bucket(registry: Registry, synthetic_exports) -> None:
    """The page's gallery on S3: photos by the key their summary row names, masks from the version's
    predictions; a photo no row names is not served, whatever is asked."""
    import hashlib

    from drywall_core.base.storage import s3_client_from
    from drywall_core.field.predictions import FieldImage, predict_field, publish_predictions
    from drywall_core.model.runtime import load_for_inference

    s = registry.settings
    client = s3_client_from(s)
    photos = sorted(synthetic_exports[0].rglob("*.jpg"))[:2]
    images = []
    for p in photos:
        key = f"{s.field_images_prefix}sites/north/{p.name}"
        client.upload_file(str(p), s.s3_bucket, key)
        images.append(FieldImage(p, key))
    v1 = registry.ctx.models.download("v1", registry.root / "v1-copy")
    run = predict_field(
        load_for_inference(v1), images, ["segment crack"], registry.root / "field", "v1", progress=False
    )
    publish_predictions(registry.ctx.store, "v1", run)
    host = registry.host("gallery").start()
    try:
        host.wait_ready()
        items = httpx.get(host.url + "/v1/gallery", headers=AUTH, timeout=10).json()["items"]
        assert sorted(i["image"] for i in items) == sorted(im.name for im in images)
        item = items[0]
        photo = httpx.get(host.url + "/v1/gallery/photo", params={"sha256": item["sha256"]}, headers=AUTH, timeout=10)
        assert photo.status_code == 200 and hashlib.sha256(photo.content).hexdigest() == item["sha256"]
        mask = httpx.get(host.url + "/v1/gallery/mask", params={"sha256": item["sha256"], "prompt": "segment crack"},
                         headers=AUTH, timeout=10)  # fmt: skip
        assert mask.status_code == 200 and mask.headers["content-type"] == "image/png"
        unknown = httpx.get(host.url + "/v1/gallery/photo", params={"sha256": "0" * 64}, headers=AUTH, timeout=10)
        assert unknown.status_code == 404 and "no field prediction" in unknown.json()["error"]
        bad = httpx.get(host.url + "/v1/gallery/photo", params={"sha256": "../../etc/passwd"}, headers=AUTH)
        assert bad.status_code == 422
        assert httpx.get(host.url + "/v1/gallery", timeout=10).status_code == 401
    finally:
        host.stop()
