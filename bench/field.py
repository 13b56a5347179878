"""Benchmark: field predictions for every prompt, the predict-field way vs one `predict` per prompt.

Real CLIPSeg rd64-refined architecture with random weights (the real compute), int8 on the CPU as
`predict-field` runs it. naive: `predict_files` once per prompt (what a user scripting `drywall
predict` per prompt gets: each prompt encodes every image again), plus a pass over the written masks
for the summary. ours: `predict_field` (each image encoded once, decoded per prompt; masks and the
uncertainty summary in the same pass). Both write every mask as PNG. The last line is
``ratio: N.Nx``.

Usage: python -m bench.field [--images 24] [--threads 2]
"""

from __future__ import annotations

import argparse
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
    ap = bench_parser(__doc__)
    ap.add_argument("--images", type=int, default=24, help="Real crack images (field photos) to predict.")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the CI machine has 2 cores).")
    return ap


if __name__ == "__main__":
    _parser().parse_args()  # --help and bad options answer in a fraction of a second


import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench._common import bench_model, crack_samples, table  # noqa: E402
from drywall_core.field.predictions import FieldImage, predict_field  # noqa: E402
from drywall_core.model.predict import predict_files  # noqa: E402
from drywall_core.model.runtime import for_inference  # noqa: E402

PROMPTS = ["segment crack", "segment taping area"]


def naive(loaded, paths: list[Path], out: Path) -> float:
    t0 = time.perf_counter()
    fractions = []
    for prompt in PROMPTS:
        report = predict_files(loaded, paths, prompt, out, progress=False)
        fractions += [float((np.asarray(Image.open(m)) > 0).mean()) for m in report.written]
    return time.perf_counter() - t0


def ours(loaded, paths: list[Path], out: Path) -> float:
    t0 = time.perf_counter()
    images = [FieldImage(p, p.name) for p in paths]
    predict_field(loaded, images, PROMPTS, out, "bench", progress=False)
    return time.perf_counter() - t0


def main() -> None:
    args = _parser().parse_args()
    if args.smoke:
        args.images = 4
    torch.set_num_threads(args.threads)
    samples, where = crack_samples(args.images)
    paths = [s.image for s in samples]
    loaded = for_inference(bench_model(args.smoke), "int8")
    work = Path(tempfile.mkdtemp(prefix="bench-field-"))
    try:
        ours(loaded, paths[:2], work / "warm")  # warm-up
        t_naive = naive(loaded, paths, work / "naive")
        t_ours = ours(loaded, paths, work / "ours")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = len(paths) * len(PROMPTS)
    table(
        f"field predictions: {len(paths)} images x {len(PROMPTS)} prompts from {where} "
        f"(int8, CPU {torch.get_num_threads()} threads)",
        ["method", "seconds", "masks/s", "vs naive"],
        [
            ["naive: predict per prompt + summary pass", f"{t_naive:.2f}", f"{n / t_naive:.2f}", "1.00x"],
            ["ours: predict_field (encode once)", f"{t_ours:.2f}", f"{n / t_ours:.2f}", f"{t_naive / t_ours:.2f}x"],
        ],
    )
    print(f"ratio: {t_naive / t_ours:.1f}x")


if __name__ == "__main__":
    main()
