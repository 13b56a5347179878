"""Benchmark: crack measurements, ours vs the naive way, then the real crack export's ground truth.

naive: the skeleton's pixel steps counted as 1 (orthogonal) and sqrt 2 (diagonal), the width as
       twice the distance to the edge along the skeleton (no corner term, no spur pruning, no tips).
ours:  ``drywall_core.model.measure.measure_mask``.

Part 1 draws bands of known length (240 px) and width (1-12 px) at 0-170 degrees and prints the
worst length and width errors of both. Part 2 measures every ground-truth mask of the real crack
export (``DRYWALL_SAMPLE_DATA``) and prints what its cracks look like, per split.

Usage: python -m bench.measure [--data DIR] [--smoke]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cli import bench_parser  # noqa: E402 - stdlib only

SMOKE_HELP = "tiny inputs: checks that the bench runs on today's code (CI); measures nothing"


def _parser() -> argparse.ArgumentParser:
    """The command line (stdlib only: `--help` answers before the heavy imports)."""
    ap = bench_parser(__doc__, SMOKE_HELP, data=True)
    return ap


if __name__ == "__main__":
    _parser().parse_args()  # --help and bad options answer in a fraction of a second


import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from bench._common import smoke_exports, table  # noqa: E402
from drywall_core.model.measure import measure_mask  # noqa: E402

LENGTH = 240.0


def band(shape: tuple[int, int], angle: float, width: float, length: float = LENGTH) -> np.ndarray:
    """A straight band through the centre: pixels whose centre lies within the rectangle."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    a = math.radians(angle)
    ux, uy = math.cos(a), math.sin(a)
    along = (xx - w / 2) * ux + (yy - h / 2) * uy
    across = -(xx - w / 2) * uy + (yy - h / 2) * ux
    return (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)


def naive(mask: np.ndarray) -> tuple[float, float]:
    """(length, max width) by plain step counting on the skeleton."""
    from skimage.morphology import skeletonize

    s = skeletonize(mask)
    orth = (s[:, :-1] & s[:, 1:]).sum() + (s[:-1, :] & s[1:, :]).sum()
    diag = (s[:-1, :-1] & s[1:, 1:]).sum() + (s[:-1, 1:] & s[1:, :-1]).sum()
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return float(orth + math.sqrt(2) * diag), float(2 * dist[s].max()) if s.any() else 0.0


def geometry(smoke: bool) -> None:
    angles = [0, 30] if smoke else list(range(0, 180, 10))
    widths = [3] if smoke else [1, 2, 3, 5, 8, 12]
    worst = {"naive": [0.0, 0.0], "ours": [0.0, 0.0]}
    times = {"naive": 0.0, "ours": 0.0}
    for w in widths:
        for a in angles:
            mask = band((400, 400), a, w)
            t0 = time.perf_counter()
            n_len, n_wid = naive(mask)
            t1 = time.perf_counter()
            m = measure_mask(mask)
            t2 = time.perf_counter()
            times["naive"] += t1 - t0
            times["ours"] += t2 - t1
            for name, (length, width) in (("naive", (n_len, n_wid)), ("ours", (m.total_length_px, m.max_width_px))):
                worst[name][0] = max(worst[name][0], abs(length - LENGTH) / LENGTH)
                worst[name][1] = max(worst[name][1], abs(width - w))
    n = len(angles) * len(widths)
    ratio = worst["naive"][0] / max(worst["ours"][0], 1e-9)
    rows = [
        [name, f"{100 * worst[name][0]:.1f}%", f"{worst[name][1]:.2f}", f"{1000 * times[name] / n:.1f}"]
        for name in ("naive", "ours")
    ]
    rows.append(
        ["naive / ours", f"{ratio:.1f}x",
         f"{worst['naive'][1] / max(worst['ours'][1], 1e-9):.1f}x", f"{times['naive'] / times['ours']:.2f}x"]
    )  # fmt: skip
    table(
        f"crack measurements on {n} bands of known size ({len(widths)} widths x {len(angles)} angles, 400x400)",
        ["method", "worst length error", "worst width error px", "ms / mask"],
        rows,
    )
    print(f"ratio: naive's worst length error is {ratio:.1f}x ours")


def ground_truth(data: Path) -> None:
    from drywall_core.data.exports import open_export
    from drywall_core.data.masks import render_masks

    export_dir = next((p for p in sorted(data.glob("*.coco")) if "crack" in p.name.lower()), None)
    if export_dir is None:
        raise SystemExit(f"no crack export (*crack*.coco) under {data}")
    masks = Path(tempfile.mkdtemp(prefix="bench-measure-")) / "masks"
    render_masks(open_export(export_dir), masks, progress=False)
    rows = []
    for split in sorted(p for p in masks.iterdir() if p.is_dir()):
        from PIL import Image

        ms = [measure_mask(np.asarray(Image.open(f)) > 0) for f in sorted(split.glob("*.png"))]
        if not ms:
            continue
        cracks = np.array([m.n_cracks for m in ms])
        lengths = np.array([c.length_px for m in ms for c in m.cracks])
        widths = np.array([c.max_width_px for m in ms for c in m.cracks])
        means = np.array([c.mean_width_px for m in ms for c in m.cracks])
        pct = lambda a, q: f"{np.percentile(a, q):.0f}" if len(a) else "-"  # noqa: E731
        rows.append(
            [split.name, str(len(ms)), f"{cracks.mean():.2f}", str(int(cracks.sum())), pct(lengths, 50),
             pct(lengths, 90), f"{np.median(means):.1f}" if len(means) else "-", pct(widths, 50), pct(widths, 90)]
        )  # fmt: skip
    table(
        f"ground-truth crack masks of {export_dir.name} ({export_dir.parent})",
        ["split", "masks", "cracks / mask", "cracks", "length p50 px", "length p90 px", "mean width p50 px",
         "max width p50 px", "max width p90 px"],
        rows,
    )  # fmt: skip


def blobs(smoke: bool) -> None:
    """A model that calls most of a photo a crack: measuring it at full size against the coarse grid."""
    import drywall_core.model.measure as m

    sizes = (160,) if smoke else (640, 1024)
    rows = []
    for side in sizes:
        full = np.ones((side, side), bool)
        disk = band((side + 40, side + 40), 30, side // 2, side)
        for name, mask in ((f"{side} x {side} all foreground", full), (f"band {side // 2} px wide", disk)):
            before = m.COARSE_RADIUS
            times = {}
            for way, radius in (("full size", 10**9), ("coarse grid", before)):
                m.COARSE_RADIUS = radius
                t0 = time.perf_counter()
                got = measure_mask(mask)
                times[way] = (time.perf_counter() - t0, got.total_length_px)
            m.COARSE_RADIUS = before
            (tf, lf), (tc, lc) = times["full size"], times["coarse grid"]
            rows.append([name, f"{1000 * tf:.0f} ms", f"{1000 * tc:.0f} ms", f"{lf:.0f} / {lc:.0f}", f"{tf / tc:.1f}x"])
    table("regions over 256 px wide (no crack): full-size thinning vs the coarse grid", ["mask", "full size",
          "coarse grid", "length px full / coarse", "ratio"], rows)  # fmt: skip


def main() -> None:
    args = _parser().parse_args()
    geometry(args.smoke)
    blobs(args.smoke)
    ground_truth(smoke_exports() if args.smoke else args.data)


if __name__ == "__main__":
    main()
