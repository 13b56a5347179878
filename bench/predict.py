"""Benchmark: prediction images/s on the CPU, each mode vs the naive Hugging Face call, same run.

Real CLIPSeg rd64-refined architecture with random weights (the real compute), at the real input
size. naive: ``model(**processor(text, images))`` one image at a time (the model-card recipe; all
12 vision layers, fp32). ours: ``predict_probs`` (only the vision layers the decoder reads) in
fp32 and in int8 (``for_inference``: the vision tower's linear layers dynamically quantized), one
image at a time, batched in one call, and batched with the batch's images encoded on parallel
threads (one per torch thread, single-threaded kernels: what ``for_inference`` turns on for a
CPU). All include preprocessing and upsampling to the original size; masks are not written.
Each timed loop runs ``--repeats`` times; the median is reported. Every mode's masks
(probability >= 0.5) are compared with the naive fp32 masks: mean IoU over the images. The last
line is ``ratio: N.Nx``, the fastest mode's images/s over the naive call's.

Usage: python -m bench.predict [--images 24] [--batch-size 8] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cli import bench_parser  # noqa: E402 - stdlib only


def _parser() -> argparse.ArgumentParser:
    """The command line (stdlib only: `--help` answers before the heavy imports)."""
    ap = bench_parser(__doc__)
    ap.add_argument("--images", type=int, default=24, help="Real crack images to predict.")
    ap.add_argument("--batch-size", type=int, default=8, help="Images per batch in the batched modes.")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the CI machine has 2 cores).")
    ap.add_argument("--repeats", type=int, default=3, help="Runs of each timed loop (median reported).")
    return ap


if __name__ == "__main__":
    _parser().parse_args()  # --help and bad options answer in a fraction of a second


import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from bench._common import bench_model, crack_samples, table  # noqa: E402
from drywall_core.model.runtime import for_inference, probabilities_for  # noqa: E402

PROMPT = "segment crack"


def median_run(fn, repeats: int) -> tuple[float, list[np.ndarray]]:
    """The median time of ``repeats`` runs of ``fn`` (each returns (seconds, probabilities))."""
    runs = [fn() for _ in range(max(repeats, 1))]
    return statistics.median(t for t, _ in runs), runs[0][1]


def naive(loaded, images) -> tuple[float, list[np.ndarray]]:
    out = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for im in images:
            inputs = loaded.processor(text=[PROMPT], images=[im], padding=True, return_tensors="pt")
            logits = loaded.model(**inputs).logits
            up = F.interpolate(logits.reshape(1, 1, *logits.shape[-2:]), size=im.size[::-1], mode="bilinear")
            out.append(torch.sigmoid(up)[0, 0])
    return time.perf_counter() - t0, [p.numpy() for p in out]


def ours(loaded, images, batch: int, parallel: bool) -> tuple[float, list[np.ndarray]]:
    loaded.parallel_images = parallel
    out = []
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        out += probabilities_for(loaded, images[i : i + batch], PROMPT)
    return time.perf_counter() - t0, out


def mean_iou(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    ious = []
    for x, y in zip(a, b, strict=True):
        px, py = x >= 0.5, y >= 0.5
        union = (px | py).sum()
        ious.append(1.0 if union == 0 else (px & py).sum() / union)
    return float(np.mean(ious))


def main() -> None:
    args = _parser().parse_args()
    if args.smoke:
        args.images, args.repeats, args.batch_size = 4, 1, 2
    torch.set_num_threads(args.threads)
    samples, where = crack_samples(args.images)
    images = [Image.open(s.image).convert("RGB") for s in samples]
    naive_model = bench_model(args.smoke)
    naive_model.model.eval()
    fp32 = for_inference(bench_model(args.smoke), "fp32")
    int8 = for_inference(bench_model(args.smoke), "int8")
    for loaded in (fp32, int8):
        probabilities_for(loaded, images[:2], PROMPT)  # warm-up
    n = len(images)
    t_naive, reference = median_run(lambda: naive(naive_model, images), args.repeats)
    rows = [["naive HF call (fp32), one at a time", f"{t_naive:.2f}", f"{n / t_naive:.2f}", "1.000", "1.00x"]]
    modes = [("one at a time", 1, False), (f"batch {args.batch_size}", args.batch_size, False)]
    modes.append((f"batch {args.batch_size}, parallel images", args.batch_size, True))
    best = 0.0
    for name, loaded in (("fp32", fp32), ("int8", int8)):
        for label, batch, parallel in modes:
            t, probs = median_run(lambda: ours(loaded, images, batch, parallel), args.repeats)  # noqa: B023
            iou = mean_iou(probs, reference)
            rows.append([f"ours {name}, {label}", f"{t:.2f}", f"{n / t:.2f}", f"{iou:.3f}", f"{t_naive / t:.2f}x"])
            best = max(best, t_naive / t)
    table(
        f"predict: {n} images from {where} (CPU {torch.get_num_threads()} threads, median of {args.repeats})",
        ["method", "seconds", "images/s", "mask IoU vs naive", "vs naive"],
        rows,
    )
    print(f"ratio: {best:.1f}x")


if __name__ == "__main__":
    main()
