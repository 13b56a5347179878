"""Benchmark: the prediction service against a naive one, under a closed-loop load, same run.

ours: ``drywall serve``'s application (the registry's champion, int8 with parallel images on a
CPU, concurrent requests coalesced into batches, each photo encoded once, text embeddings once per
model). naive: a FastAPI handler calling the plain Hugging Face CLIPSeg per request
(``model(**processor(text, images))``, fp32, all vision layers), which FastAPI runs on its thread
pool. Both answer the same JSON (RLE masks at the photo's size) over real HTTP on loopback; each
runs in its own process, one at a time, and a closed-loop load generator (C clients, each sending
its next request when the last is answered) sends real photos at concurrency 1, 8 and 32.
Local prediction of one photo (the same int8 runtime, in this process, with the RLE encoding) is
the floor a request's latency is compared with at concurrency 1. The model is the real CLIPSeg
rd64-refined architecture with random weights (no pretrained weights reach these machines: the
compute is the real one). The last line is ``ratio: N.Nx``: throughput at concurrency 8, ours
over naive.

Usage: python -m bench.serve [--seconds 20] [--concurrency 1 8 32] [--photos 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cli import bench_parser  # noqa: E402 - stdlib only


def _parser() -> argparse.ArgumentParser:
    """The command line (stdlib only: `--help` answers before the heavy imports)."""
    ap = bench_parser(__doc__)
    ap.add_argument("--seconds", type=float, default=20.0, help="Load per service and concurrency.")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="Closed-loop clients.")
    ap.add_argument("--photos", type=int, default=16, help="Real crack photos the clients send in turn.")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each service (2 cores here).")
    ap.add_argument("--role", choices=["ours", "naive"], help=argparse.SUPPRESS)  # a service process
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    return ap


if __name__ == "__main__":
    _parser().parse_args()  # --help and bad options answer in a fraction of a second


import io  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from fastapi import FastAPI, File, Form, UploadFile  # noqa: E402 - module level: the handler's annotations

from bench._common import bench_model, crack_samples, table  # noqa: E402

PROMPT = "segment crack"


# -- the two services, each run as `python -m bench.serve --role R --port P` ------------------


def naive_app(smoke: bool):
    """The naive service: the Hugging Face call per request (the model-card recipe)."""
    import torch.nn.functional as F
    from PIL import Image

    from drywall_core.data.masks import encode_rle

    loaded = bench_model(smoke)
    loaded.model.eval()
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict:
        return {"status": "ready"}

    @app.post("/v1/segment")
    def segment(image: UploadFile = File(...), prompt: list[str] = Form(...)) -> dict:  # noqa: B008
        im = Image.open(io.BytesIO(image.file.read())).convert("RGB")
        results = []
        with torch.no_grad():
            for p in prompt:
                inputs = loaded.processor(text=[p], images=[im], padding=True, return_tensors="pt")
                logits = loaded.model(**inputs).logits
                up = F.interpolate(logits.reshape(1, 1, *logits.shape[-2:]), size=im.size[::-1], mode="bilinear")
                mask = (torch.sigmoid(up)[0, 0] >= 0.5).numpy()
                results.append({"prompt": p, "mask": encode_rle(mask)})
        return {"model_version": "naive", "width": im.size[0], "height": im.size[1], "results": results,
                "timings_ms": {"batch_size": 1.0}}  # fmt: skip

    return app


def publish_bench_model(home: Path, smoke: bool) -> None:
    """The bench model as the champion of a registry under ``home`` (what ``drywall serve`` serves)."""
    from drywall_core.base.config import Settings
    from drywall_core.model.load import save_decoder
    from drywall_core.stages.context import Context, QuietReporter

    ctx = Context(Settings(home=home), QuietReporter())
    art = home / "artifact"
    save_decoder(bench_model(smoke), art)
    ctx.models.promote(ctx.models.publish(art, version="bench")["version"], None)


def serve_role(args: argparse.Namespace) -> None:
    import uvicorn

    torch.set_num_threads(args.threads)
    if args.role == "naive":
        app = naive_app(args.smoke)
    else:
        from drywall_core.base.config import Settings
        from drywall_core.serve.app import Service, create_app
        from drywall_core.stages.context import Context, QuietReporter

        settings = Settings(home=args.home)
        cfg = settings.serve.model_copy(update={"rate_per_min": 1e9, "rate_burst": 10**6})
        app = create_app(Service(Context(settings, QuietReporter()), cfg, keys=None))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


# -- the load ---------------------------------------------------------------------------------


def start(role: str, args: argparse.Namespace, home: Path) -> tuple[subprocess.Popen, str]:
    from deployments.s3server import free_port_pair

    port = free_port_pair()
    cmd = [sys.executable, "-m", "bench.serve", "--role", role, "--port", str(port), "--home", str(home),
           "--threads", str(args.threads)] + (["--smoke"] if args.smoke else [])  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the {role} service exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the {role} service was not ready after 600 s")


def closed_loop(url: str, photos: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` clients, each sending its next photo once the last is answered, for ``seconds``."""
    latencies: list[float] = []
    batches: list[float] = []
    failed = [0]
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def client(i: int) -> None:
        with httpx.Client(timeout=300) as c:
            n = i
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                r = c.post(url + "/v1/segment", files={"image": ("p.jpg", photos[n % len(photos)])},
                           data={"prompt": PROMPT})  # fmt: skip
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        latencies.append(dt)
                        batches.append(r.json()["timings_ms"].get("batch_size", 1.0))
                    else:
                        failed[0] += 1
                n += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = np.percentile(latencies, [50, 95, 99]) * 1000 if latencies else [float("nan")] * 3
    return {"rps": len(latencies) / wall, "p50": q[0], "p95": q[1], "p99": q[2],
            "batch": float(np.mean(batches or [0])), "n": len(latencies), "failed": failed[0]}  # fmt: skip


def local_one_photo_ms(photos: list[bytes], smoke: bool, threads: int) -> float:
    """p50 of local prediction of one photo: decode, the int8 runtime, threshold and RLE encode."""
    from PIL import Image

    from drywall_core.data.images import decode_rgb
    from drywall_core.data.masks import encode_rle
    from drywall_core.model.runtime import for_inference, probabilities_for

    torch.set_num_threads(threads)
    loaded = for_inference(bench_model(smoke), "int8")
    times = []
    for i in range(max(8, len(photos))):
        t0 = time.perf_counter()
        im = decode_rgb(Image.open(io.BytesIO(photos[i % len(photos)])))
        encode_rle(probabilities_for(loaded, [im], PROMPT)[0] >= 0.5)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:]) * 1000


def main() -> None:
    args = _parser().parse_args()
    if args.role:
        return serve_role(args)
    if args.smoke:
        args.seconds, args.concurrency, args.photos = 2.0, [1, 4], 4
    samples, where = crack_samples(args.photos)
    photos = [s.image.read_bytes() for s in samples]
    home = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    publish_bench_model(home, args.smoke)
    results: dict[str, dict[int, dict[str, float]]] = {}
    for role in ("ours", "naive"):
        proc, url = start(role, args, home)
        try:
            closed_loop(url, photos, 1, min(args.seconds, 3.0))  # warm-up
            results[role] = {c: closed_loop(url, photos, c, args.seconds) for c in args.concurrency}
        finally:
            proc.terminate()
            proc.wait(60)
    local = local_one_photo_ms(photos, args.smoke, args.threads)
    rows = []
    for c in args.concurrency:
        for role in ("ours", "naive"):
            r = results[role][c]
            ratio = r["rps"] / results["naive"][c]["rps"] if results["naive"][c]["rps"] else float("nan")
            rows.append([role, str(c), f"{r['rps']:.2f}", f"{r['p50']:.0f}", f"{r['p95']:.0f}", f"{r['p99']:.0f}",
                         f"{r['batch']:.2f}", f"{r['n']}/{r['failed']}", f"{ratio:.2f}x"])  # fmt: skip
    size = "tiny model (--smoke)" if args.smoke else "real rd64-refined architecture, random weights"
    table(
        f"serve: {len(photos)} photos from {where}; {size}; {args.threads} torch threads; {args.seconds:g} s each",
        ["service", "clients", "requests/s", "p50 ms", "p95 ms", "p99 ms", "mean batch", "ok/failed", "vs naive"],
        rows,
    )
    c1 = 1 if 1 in args.concurrency else args.concurrency[0]
    print(f"local prediction of one photo: p50 {local:.0f} ms; ours at concurrency {c1}: p50 "
          f"{results['ours'][c1]['p50']:.0f} ms ({results['ours'][c1]['p50'] - local:+.0f} ms)")  # fmt: skip
    c8 = 8 if 8 in args.concurrency else max(args.concurrency)
    print(f"ratio: {results['ours'][c8]['rps'] / results['naive'][c8]['rps']:.1f}x")


if __name__ == "__main__":
    main()
