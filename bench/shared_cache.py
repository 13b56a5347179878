"""Benchmark: a fresh GPU host with the activation cache shared through the artifact store vs a cold build.

The situation of an ephemeral GPU pod each night: the dataset grew by ``--new-share`` (10%) since
the last run. The naive way encodes every image through the frozen backbone again on the fresh
host. With the shared cache (``cache/<fingerprint>-<dtype>/<sha256>.npy`` in the store), the fresh
host downloads what an earlier host encoded and encodes only the new images. Both are measured in
the same run, on the real CLIPSeg rd64-refined architecture (random weights: the same compute),
against a local-folder store (an S3 store adds network time per entry; the counts are the same).
The downloaded activations are checked equal to the encoded ones before the times are compared.

Usage: python -m bench.shared_cache [--images 40] [--new-share 0.1] [--threads 2]
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--images", type=int, default=40, help="Images the previous run encoded.")
    ap.add_argument("--new-share", type=float, default=0.1, help="Share of new images in tonight's dataset.")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the CI machine has 2 cores).")
    return ap


if __name__ == "__main__":
    _parser().parse_args()  # --help and bad options answer in a fraction of a second


import torch  # noqa: E402

from bench._common import bench_model, crack_samples, table  # noqa: E402
from drywall_core.base.storage import LocalStore  # noqa: E402
from drywall_core.model.cache import ActivationCache, CacheItem, SharedCache  # noqa: E402


def main() -> None:
    args = _parser().parse_args()
    if args.smoke:
        args.images = 6
    torch.set_num_threads(args.threads)
    new = max(1, round(args.images * args.new_share))
    samples, where = crack_samples(args.images + new)
    old_items = [CacheItem(s.image) for s in samples[: args.images]]
    all_items = [CacheItem(s.image) for s in samples]
    print(f"{len(old_items)} images encoded last night + {len(all_items) - len(old_items)} new, from the {where}")
    loaded = bench_model(args.smoke)
    tmp = Path(tempfile.mkdtemp(prefix="bench-shared-cache-"))
    store = LocalStore(tmp / "store")

    # last night's host: encodes and uploads (not timed: it is what made the store's entries)
    SharedCache(ActivationCache(tmp / "host-1", loaded), store).build(old_items, progress=False)

    t0 = time.perf_counter()  # naive: a fresh host encodes everything again
    cold = ActivationCache(tmp / "host-2", loaded)
    cold_stats = cold.build(all_items, progress=False)
    t_cold = time.perf_counter() - t0

    t0 = time.perf_counter()  # shared: a fresh host downloads what exists, encodes only the new images
    warm = ActivationCache(tmp / "host-3", loaded)
    warm_stats = SharedCache(warm, store).build(all_items, progress=False)
    t_warm = time.perf_counter() - t0

    keys = [it.key for it in all_items]
    assert torch.equal(cold.get(keys), warm.get(keys)), "downloaded activations differ from encoded ones"
    assert warm_stats["encoded"] == len(all_items) - len(old_items)
    table(
        f"fresh host, {len(all_items)} images ({len(all_items) - len(old_items)} new): activation cache build",
        ["mode", "encoded", "downloaded", "uploaded", "seconds", "images/s", "ratio"],
        [
            [
                "cold build (naive)",
                str(cold_stats["encoded"]),
                "0",
                "0",
                f"{t_cold:.1f}",
                f"{len(all_items) / t_cold:.1f}",
                "1.0x",
            ],
            [
                "shared cache",
                str(warm_stats["encoded"]),
                str(warm_stats["downloaded"]),
                str(warm_stats["uploaded"]),
                f"{t_warm:.1f}",
                f"{len(all_items) / t_warm:.1f}",
                f"{t_cold / t_warm:.1f}x",
            ],
        ],
    )
    print(f"ratio: {t_cold / t_warm:.1f}x")


if __name__ == "__main__":
    main()
