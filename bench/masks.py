"""Benchmark: mask rendering images/s, ours vs the naive loop, same data, same run.

naive: pycocotools' COCO API, one ``annToMask`` per annotation OR-ed into the image mask,
       ``Image.save`` with PIL defaults, one process.
ours:  ``drywall_core.data.masks.render_masks``: RLEs merged before one decode, fast PNG level,
       all cores, atomic writes.

Usage: python -m bench.masks [--data DIR] [--repeat N]   (DIR defaults to DRYWALL_SAMPLE_DATA)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cli import bench_parser  # noqa: E402 - stdlib only


def _parser() -> argparse.ArgumentParser:
    """The command line (stdlib only: `--help` answers before the heavy imports)."""
    ap = bench_parser(__doc__, data=True)
    ap.add_argument("--repeat", type=int, default=3)
    return ap


if __name__ == "__main__":
    _parser().parse_args()  # --help and bad options answer in a fraction of a second


import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench._common import smoke_exports  # noqa: E402
from drywall_core.data.exports import open_export  # noqa: E402
from drywall_core.data.masks import render_masks  # noqa: E402


def naive(export_root: Path, out: Path) -> int:
    from pycocotools import mask as mu
    from pycocotools.coco import COCO

    n = 0
    for ann_file in sorted(export_root.glob("*/_annotations.coco.json")):
        split = ann_file.parent.name
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its index progress
            coco = COCO(str(ann_file))
        (out / split).mkdir(parents=True, exist_ok=True)
        for img_id, img in coco.imgs.items():
            m = np.zeros((img["height"], img["width"]), dtype=np.uint8)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img_id])):
                if ann["segmentation"]:
                    m |= coco.annToMask(ann)
                else:
                    box = np.asarray([ann["bbox"]], dtype=np.float64)
                    m |= mu.decode(mu.frPyObjects(box, img["height"], img["width"]))[..., 0]
            Image.fromarray(m * 255, mode="L").save(out / split / f"{Path(img['file_name']).stem}.png")
            n += 1
    return n


def ours(export_root: Path, out: Path) -> int:
    stats = render_masks(open_export(export_root), out, workers=0, progress=False)
    return stats.rendered


def main() -> None:
    args = _parser().parse_args()
    if args.smoke:
        args.repeat = 1
        args.data = smoke_exports()
    exports = sorted(p for p in args.data.glob("*.coco") if p.is_dir())
    if not exports:
        raise SystemExit(f"no *.coco exports under {args.data}")

    results: dict[str, list[float]] = {"naive": [], "ours": []}
    n_images = 0
    for _ in range(args.repeat):
        for name, fn in (("naive", naive), ("ours", ours)):
            tmp = Path(tempfile.mkdtemp(prefix=f"bench-masks-{name}-"))
            t0 = time.perf_counter()
            n_images = sum(fn(e, tmp / e.name) for e in exports)
            results[name].append(time.perf_counter() - t0)
            shutil.rmtree(tmp)
    # incremental re-run: nothing changed, nothing rendered
    tmp = Path(tempfile.mkdtemp(prefix="bench-masks-incr-"))
    for e in exports:
        ours(e, tmp / e.name)
    t0 = time.perf_counter()
    for e in exports:
        ours(e, tmp / e.name)
    incremental = time.perf_counter() - t0
    shutil.rmtree(tmp)

    best = {k: min(v) for k, v in results.items()}
    table = Table(
        title=f"mask rendering: {n_images} images from {', '.join(e.name for e in exports)} "
        f"({os.cpu_count()} cores, best of {args.repeat})"
    )
    for col in ("method", "seconds", "images/s", "vs naive"):
        table.add_column(col, justify="right")
    for name in ("naive", "ours"):
        table.add_row(name, f"{best[name]:.2f}", f"{n_images / best[name]:.0f}", f"{best['naive'] / best[name]:.2f}x")
    table.add_row(
        "ours, unchanged re-run",
        f"{incremental:.3f}",
        f"{n_images / incremental:.0f}",
        f"{best['naive'] / incremental:.0f}x",
    )
    Console().print(table)
    print(f"ratio: {best['naive'] / best['ours']:.1f}x")


if __name__ == "__main__":
    main()
