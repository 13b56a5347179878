"""Benchmark: how each pipeline stage grows from 1,000 to 16,000 images (time and peak memory).

Builds Roboflow-layout exports of N images by replicating the real crack export in
``../shared/data`` (every copy gets distinct bytes -- a marker after the JPEG's end -- and the same
annotations under new ids and names; each copy is its own source photo), then runs each stage in a
fresh process, so its peak RSS is its own: GX validation, mask rendering, split + dataset snapshot
(hashes, manifest, upload to a local store), the activation-cache build and one cached epoch with
the tiny model (int8 cache), and field drift features. Per stage and N: seconds, images/s and peak
RSS (the stage's process and the workers it started). Per stage, the growth exponent is the slope
of log(seconds) against log(N): 1.0 is linear. The naive reference is linear growth itself: an
exponent above 1 means cost per image rises with the dataset.

Usage: python -m bench.scale [--quick] [--sizes 1000 4000 16000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cli import bench_parser  # noqa: E402 - stdlib only


def _parser() -> argparse.ArgumentParser:
    """The command line (stdlib only: `--help` answers before the heavy imports)."""
    ap = bench_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000], help="Export sizes N.")
    ap.add_argument("--quick", action="store_true", help="N = 1,000 and 4,000 only.")
    ap.add_argument("--workdir", type=Path, default=None, help="Where the exports go (default: a temp folder).")
    ap.add_argument("--keep", action="store_true", help="Keep the work folder.")
    ap.add_argument("--run-stage", nargs=3, metavar=("STAGE", "EXPORT", "WORK"), help=argparse.SUPPRESS)
    return ap


if __name__ == "__main__":
    _parser().parse_args()  # --help and bad options answer in a fraction of a second


import numpy as np  # noqa: E402

from bench._common import data_root, table  # noqa: E402

STAGES = ("validate", "masks", "snapshot", "cache-build", "cached-epoch", "drift-features")
ANNOTATIONS = "_annotations.coco.json"


def replicate(src: Path, n: int, out: Path) -> int:
    """A crack export of ``n`` images made of copies of ``src`` (same splits' proportions)."""
    from drywall_core.data.splits import source_of

    splits = {p.parent.name: json.loads(p.read_text()) for p in sorted(src.glob(f"*/{ANNOTATIONS}"))}
    total = sum(len(c["images"]) for c in splits.values())
    written = 0
    for name, coco in splits.items():
        quota = round(n * len(coco["images"]) / total)
        by_image: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        images, annotations = [], []
        (out / name).mkdir(parents=True, exist_ok=True)
        for k in range(quota):
            img = coco["images"][k % len(coco["images"])]
            copy = k // len(coco["images"])
            tag = hashlib.sha1(f"{img['file_name']}:{copy}".encode()).hexdigest()[:20]
            file_name = f"{source_of(img['file_name'])}-r{copy}.rf.{tag}.jpg"
            data = (src / name / img["file_name"]).read_bytes()
            (out / name / file_name).write_bytes(data + f"replica {copy}".encode())  # after EOI: same pixels
            new_id = len(images)
            images.append({**img, "id": new_id, "file_name": file_name})
            for ann in by_image.get(img["id"], []):
                annotations.append({**ann, "id": len(annotations), "image_id": new_id})
        body = {**coco, "images": images, "annotations": annotations}
        (out / name / ANNOTATIONS).write_text(json.dumps(body))
        written += quota
    return written


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def _samples(export: Path, work: Path) -> tuple[list, dict]:
    """Samples of the stored snapshot, read from its manifest (as a training host reads them)."""
    from drywall_core.data.datasets import DatasetSpec
    from drywall_core.data.samples import Sample
    from drywall_core.data.snapshots import MANIFEST

    (manifest_file,) = (work / "store" / "datasets").rglob(MANIFEST)
    manifest = json.loads(manifest_file.read_text())
    spec = DatasetSpec.model_validate(manifest["spec"])
    samples = []
    for e in manifest["images"]:
        split, name = e["file"].split("/", 1)
        mask = work / "masks" / split / f"{Path(name).stem}.png"
        samples.append(Sample(export / split / name, mask, spec.name, e["side"], e["source"], e["sha256"]))
    return samples, {spec.name: spec}


def run_stage(stage: str, export: Path, work: Path) -> dict[str, float]:
    """One stage on one export, in this process; returns its seconds and peak RSS."""
    from drywall_core.base.config import Settings, TrainConfig
    from drywall_core.data.datasets import load_registry
    from drywall_core.data.exports import open_export

    settings = Settings(home=work / "home")
    exp = open_export(export)
    spec = load_registry().get("cracks")
    tiny = work / "tiny-model"
    t0 = time.perf_counter()
    if stage == "validate":
        from drywall_core.data.validation import validate_export

        report = validate_export(exp, spec, settings)
        if not report.success:
            raise SystemExit(f"validation failed: {report.lines()[:3]}")
    elif stage == "masks":
        from drywall_core.data.masks import render_masks

        render_masks(exp, work / "masks", workers=0, progress=False)
    elif stage == "snapshot":
        from drywall_core.base.storage import LocalStore
        from drywall_core.data.ingest import snapshot_export

        snapshot_export(export, spec, work / "masks", settings, LocalStore(work / "store"))
    elif stage == "cache-build":
        from drywall_core.model.cache import ActivationCache, cache_items
        from drywall_core.model.load import load_model

        samples, _ = _samples(export, work)
        cache = ActivationCache(work / "cache", load_model(tiny), "int8")
        cache.build(cache_items(samples, flip=False), batch_size=32, progress=False)
    elif stage == "cached-epoch":
        from drywall_core.model.load import load_model
        from drywall_core.model.train import train

        samples, specs = _samples(export, work)
        cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-2, flip=False, cache_dtype="int8")
        train(load_model(tiny), samples, specs, cfg, work / "run", work / "cache", progress=False)
    elif stage == "drift-features":
        from drywall_core.field.drift import extract_features, find_images

        extract_features(find_images(export), workers=0, progress=False)
    else:
        raise SystemExit(f"unknown stage {stage}")
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb()}


def main() -> None:
    args = _parser().parse_args()
    if args.smoke:
        args.sizes, args.quick = [20, 40], False
    if args.run_stage:  # the child: one stage, one JSON line
        stage, export, work = args.run_stage
        print(json.dumps(run_stage(stage, Path(export), Path(work))))
        return

    from drywall_core.model.tiny import init_tiny

    src = data_root() / "cracks.v1i.coco"
    if not src.is_dir():
        raise SystemExit(f"the real crack export is needed: {src} (set DRYWALL_SAMPLE_DATA)")
    sizes = [1000, 4000] if args.quick else sorted(args.sizes)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results: dict[str, dict[int, dict[str, float]]] = {s: {} for s in STAGES}
    t_all = time.perf_counter()
    try:
        for n in sizes:
            work = root / f"n{n}"
            export = work / "export"
            t0 = time.perf_counter()
            count = replicate(src, n, export)
            init_tiny(work / "tiny-model")
            print(f"N={count}: export built in {time.perf_counter() - t0:.0f}s", flush=True)
            for stage in STAGES:
                if args.smoke:  # in this process: the smoke run checks the code, not the memory
                    results[stage][count] = run_stage(stage, export, work)
                    continue
                cmd = [sys.executable, "-m", "bench.scale", "--run-stage", stage, str(export), str(work)]
                r = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
                if r.returncode != 0:
                    raise SystemExit(f"{stage} at N={count} failed:\n{r.stderr[-3000:]}")
                got = json.loads(r.stdout.strip().splitlines()[-1])
                results[stage][count] = got
                print(f"  {stage}: {got['seconds']:.1f}s, peak RSS {got['peak_rss_mb']:.0f} MB", flush=True)
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)  # disk: the next N starts afresh
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)

    rows, lines = [], []
    for stage in STAGES:
        ns = sorted(results[stage])
        secs = [results[stage][n]["seconds"] for n in ns]
        exponent = float(np.polyfit(np.log(ns), np.log(secs), 1)[0]) if len(ns) > 1 else float("nan")
        peak = results[stage][ns[-1]]["peak_rss_mb"]
        for n, s in zip(ns, secs, strict=True):
            rows.append([stage, f"{n:,}", f"{s:.1f}", f"{n / s:.0f}", f"{results[stage][n]['peak_rss_mb']:.0f}"])
        lines.append(f"{stage}: exponent {exponent:.2f}, peak RSS {peak:.0f} MB")
    table(
        f"scale: stages from {sizes[0]:,} to {sizes[-1]:,} images ({time.perf_counter() - t_all:.0f}s in all)",
        ["stage", "images", "seconds", "images/s", "peak RSS MB"],
        rows,
    )
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
