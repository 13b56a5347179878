"""Benchmark: prediction images/s, batched vs one image at a time, vs the naive Hugging Face call.

Real CLIPSeg rd64-refined architecture with random weights. naive: ``model(**processor(text,
images))`` one image at a time (the model-card recipe; runs all 12 vision layers). ours:
``predict_probs`` (runs only the vision layers the decoder reads), one at a time and batched.
All include preprocessing and upsampling to the original size; masks are not written.

Usage: python -m bench.predict [--images 24] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

if __package__ in (None, ""):  # run as `python bench/NAME.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import crack_samples, table  # noqa: E402
from drywall_core.model import RANDOM_REAL, load_base  # noqa: E402
from drywall_core.predict import predict_probs  # noqa: E402

PROMPT = "segment crack"


def naive(loaded, images) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for im in images:
            inputs = loaded.processor(text=[PROMPT], images=[im], padding=True, return_tensors="pt")
            logits = loaded.model(**inputs).logits
            torch.sigmoid(F.interpolate(logits[None], size=im.size[::-1], mode="bilinear"))
    return time.perf_counter() - t0


def ours(loaded, images, batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        predict_probs(loaded, images[i : i + batch], PROMPT)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    samples, where = crack_samples(args.images)
    images = [Image.open(s.image).convert("RGB") for s in samples]
    loaded = load_base(RANDOM_REAL, seed=0)
    loaded.model.eval()
    predict_probs(loaded, images[:2], PROMPT)  # warm-up
    n = len(images)
    t_naive = naive(loaded, images)
    t_one = ours(loaded, images, 1)
    t_batch = ours(loaded, images, args.batch_size)
    rows = [
        ["naive HF call, one at a time", f"{t_naive:.2f}", f"{n / t_naive:.2f}", "1.00x"],
        ["ours, one at a time", f"{t_one:.2f}", f"{n / t_one:.2f}", f"{t_naive / t_one:.2f}x"],
        [f"ours, batch {args.batch_size}", f"{t_batch:.2f}", f"{n / t_batch:.2f}", f"{t_naive / t_batch:.2f}x"],
    ]
    table(
        f"predict: {n} images from {where} (CPU {torch.get_num_threads()} threads)",
        ["method", "seconds", "images/s", "vs naive"],
        rows,
    )
    print(f"ratio: {t_naive / t_batch:.2f}x")


if __name__ == "__main__":
    main()
