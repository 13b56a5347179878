"""Benchmark: drift feature extraction images/s and the Evidently report time for 1,000 images.

naive: one process, full-resolution decode (no JPEG draft mode), features on the full image.
ours:  ``drywall_core.field.drift.extract_features``: JPEG draft decode at reduced scale, features on a
       fixed 256 px copy, all cores.

Usage: python -m bench.drift [--images 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cli import bench_parser  # noqa: E402 - stdlib only


def _parser() -> argparse.ArgumentParser:
    """The command line (stdlib only: `--help` answers before the heavy imports)."""
    ap = bench_parser(__doc__)
    ap.add_argument("--images", type=int, default=1000)
    return ap


if __name__ == "__main__":
    _parser().parse_args()  # --help and bad options answer in a fraction of a second


import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from scipy import ndimage  # noqa: E402

from bench._common import data_root, table  # noqa: E402
from drywall_core.field.drift import extract_features, find_images, run_drift  # noqa: E402


def naive_features(path: Path) -> dict[str, float]:
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    grad = np.hypot(ndimage.sobel(gray, axis=0), ndimage.sobel(gray, axis=1))
    return {
        "brightness_mean": float(gray.mean()),
        "brightness_std": float(gray.std()),
        "saturation_mean": float(np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0).mean()),
        "sharpness": float(ndimage.laplace(gray).var()),
        "edges": float((grad > 0.5).mean()),
    }


def main() -> None:
    args = _parser().parse_args()
    if args.smoke:
        args.images = 8
    pool = find_images(data_root())
    if not pool:
        raise SystemExit(f"no images under {data_root()}")
    paths = [pool[i % len(pool)] for i in range(args.images)]

    t0 = time.perf_counter()
    for p in paths:
        naive_features(p)
    naive_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    feats = extract_features(paths, progress=False)
    ours_s = time.perf_counter() - t0

    half = len(feats.frame) // 2
    ref = feats.frame.iloc[:half]
    cur = type(feats)(feats.frame.iloc[half:].reset_index(drop=True), [])
    t0 = time.perf_counter()
    run_drift(ref, cur, Path(os.environ.get("TMPDIR", "/tmp")) / "bench-drift")
    report_s = time.perf_counter() - t0

    n = len(paths)
    table(
        f"drift: {n} real images ({len(pool)} distinct, {os.cpu_count()} cores)",
        ["step", "seconds", "images/s", "vs naive"],
        [
            ["features, naive (full decode, 1 process)", f"{naive_s:.2f}", f"{n / naive_s:.0f}", "1.0x"],
            [
                "features, ours (draft decode, 256 px, all cores)",
                f"{ours_s:.2f}",
                f"{n / ours_s:.0f}",
                f"{naive_s / ours_s:.1f}x",
            ],
            [f"Evidently report ({half} vs {n - half} images, HTML + JSON)", f"{report_s:.2f}", "", ""],
        ],
    )
    print(f"ratio: {naive_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
