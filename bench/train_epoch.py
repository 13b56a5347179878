"""Benchmark: one training epoch with the frozen-activation cache vs the naive loop, same run.

Real CLIPSeg rd64-refined architecture with random weights (the same compute as the real model),
same images, same batch size, same prompt, same initial decoder. The naive loop is what the usual
fine-tuning scripts do: every step loads and preprocesses the images and runs the full model
(frozen 149.6 M backbone + text tower + decoder), then backpropagates into the decoder. The cached
loop encodes every image once (on disk, memory-mapped: fp16, and int8 with per-token scales, the
default, side by side: bytes per image and epoch time) and then runs only the decoder.
Both loops start from the same decoder weights and visit the same batches: their first losses must
agree (checked below) before their times are compared. After one warm-up epoch, each loop is timed
``--repeats`` times and the median is reported (with the spread), so the ratio holds on a noisy
machine. A breakdown of the cached step (activation reads, decoder forward, backward + optimizer)
and the heaviest operators (torch.profiler) say what bounds it.

Usage: python -m bench.train_epoch [--images 48] [--batch-size 8] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
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
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs of each loop after a warm-up (median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--check-steps", type=int, default=3)
    return ap


if __name__ == "__main__":
    _parser().parse_args()  # --help and bad options answer in a fraction of a second


import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from bench._common import bench_model, crack_samples, table  # noqa: E402
from drywall_core.model.cache import ActivationCache, CacheItem, image_key  # noqa: E402
from drywall_core.model.losses import mixed_loss  # noqa: E402
from drywall_core.model.runtime import decode, text_embeddings  # noqa: E402

PROMPT = "segment crack"


def _target(mask: Path, size: int) -> torch.Tensor:
    with Image.open(mask) as m:
        return torch.from_numpy(np.asarray(m.convert("L").resize((size, size), Image.BILINEAR), np.float32) / 255.0)


def _epoch(batches, targets, opt, logits_of, steps=None, phases=None) -> tuple[float, list[float]]:
    """Time one epoch of decoder updates; ``logits_of(batch)`` is what the two loops differ in.

    ``phases`` (a dict) accumulates the seconds of the forward pass and of backward + optimizer step.
    """
    losses = []
    t0 = time.perf_counter()
    for b, batch in enumerate(batches[:steps]):
        tf = time.perf_counter()
        loss = mixed_loss(logits_of(batch), targets[b], torch.ones(len(batch), dtype=torch.bool))
        tb = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if phases is not None:
            phases["forward"] = phases.get("forward", 0.0) + tb - tf
            phases["backward + step"] = phases.get("backward + step", 0.0) + time.perf_counter() - tb
    return time.perf_counter() - t0, losses


def naive_epoch(loaded, batches, targets, opt, steps=None) -> tuple[float, list[float]]:
    """What the usual scripts do: load, preprocess and run the full model at every step."""

    def logits_of(batch):
        images = [Image.open(s.image).convert("RGB") for s in batch]
        inputs = loaded.processor(text=[PROMPT] * len(batch), images=images, padding=True, return_tensors="pt")
        return loaded.model(**inputs).logits

    return _epoch(batches, targets, opt, logits_of, steps)


def cached_epoch(loaded, cache, batches, targets, cond, opt, steps=None, phases=None) -> tuple[float, list[float]]:
    """Only the decoder, over memory-mapped activations."""
    keys = [[image_key(s.image) for s in batch] for batch in batches]  # hashing is not part of a step
    index = {id(batch): k for batch, k in zip(batches, keys, strict=True)}

    def logits_of(batch):
        t0 = time.perf_counter()
        acts = cache.get(index[id(batch)])
        if phases is not None:
            phases["activation reads"] = phases.get("activation reads", 0.0) + time.perf_counter() - t0
        return decode(loaded.model, acts, cond[: len(batch)])

    return _epoch(batches, targets, opt, logits_of, steps, phases)


def heaviest_ops(fn, top: int = 4) -> list[tuple[str, float]]:
    """(operator, share of CPU time) of the heaviest operators while ``fn`` runs (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / total) for e in events[:top]]


def main() -> None:
    args = _parser().parse_args()
    if args.smoke:
        args.images, args.batch_size, args.repeats, args.check_steps = 8, 4, 1, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    samples, where = crack_samples(args.images)
    t0 = time.perf_counter()
    loaded = bench_model(args.smoke)
    print(
        f"real-size CLIPSeg (random weights) built in {time.perf_counter() - t0:.1f}s; {len(samples)} images from "
        f"{where}; batch {args.batch_size}; {torch.get_num_threads()} threads"
    )
    size = loaded.output_size
    batches = [samples[i : i + args.batch_size] for i in range(0, len(samples), args.batch_size)]
    targets = [torch.stack([_target(s.mask, size) for s in b]) for b in batches]
    init = copy.deepcopy(loaded.model.decoder.state_dict())

    def fresh_opt():
        loaded.model.decoder.load_state_dict(init)
        return torch.optim.AdamW(loaded.model.decoder.parameters(), lr=1e-4, weight_decay=1e-4)

    # naive loop: one warm-up epoch (its losses are checked below), then the timed repeats
    opt = fresh_opt()
    naive_times, naive_losses = [], []
    for _ in range(1 + args.repeats):
        t, losses = naive_epoch(loaded, batches, targets, opt)
        naive_times.append(t)
        naive_losses.append(losses)

    # cached loops, fp16 and int8 (the default): build once each, then the same epochs over the cache
    cond = text_embeddings(loaded, [PROMPT]).expand(args.batch_size, -1)
    runs: dict[str, dict] = {}
    for dtype in ("float16", "int8"):
        cache = ActivationCache(Path(tempfile.mkdtemp(prefix=f"bench-cache-{dtype}-")), loaded, dtype)
        t0 = time.perf_counter()
        cache.build([CacheItem(s.image) for s in samples], batch_size=args.batch_size, progress=False)
        build_s = time.perf_counter() - t0
        opt = fresh_opt()
        times, losses_run, phases = [], [], {}
        for i in range(1 + args.repeats):
            t, losses = cached_epoch(loaded, cache, batches, targets, cond, opt, phases=phases if i else None)
            times.append(t)
            losses_run.append(losses)
        runs[dtype] = {"cache": cache, "build": build_s, "times": times, "losses": losses_run, "phases": phases}
    ops = heaviest_ops(lambda: cached_epoch(loaded, runs["int8"]["cache"], batches, targets, cond, fresh_opt()))

    # same losses on the first steps (first epoch, same start, same batches)
    k = min(args.check_steps, len(batches))
    a = np.array(naive_losses[0][:k])
    for dtype, run in runs.items():
        b = np.array(run["losses"][0][:k])
        rel = float(np.max(np.abs(a - b) / np.abs(a)))
        print(
            f"first {k} losses  naive: {np.round(a, 5).tolist()}  cached({dtype}): {np.round(b, 5).tolist()}  "
            f"max relative diff {rel:.2e}"
        )
        if rel > 1e-2:
            raise SystemExit(f"FAIL: cached ({dtype}) and naive losses disagree (max relative diff {rel:.3e} > 1e-2)")

    n = len(samples)
    naive_e = float(np.median(naive_times[1:]))

    def spread(times: list[float]) -> str:
        return f"{min(times[1:]):.2f}-{max(times[1:]):.2f}"

    rows = [["naive (full model every step)", f"{naive_e:.2f}", spread(naive_times), f"{n / naive_e:.1f}", "", "1.0x"]]
    for dtype, run in runs.items():
        run["epoch"] = float(np.median(run["times"][1:]))
        mb = run["cache"].bytes_per_view() / 1e6
        rows.append(
            [
                f"cached, {dtype} (decoder only)",
                f"{run['epoch']:.2f}",
                spread(run["times"]),
                f"{n / run['epoch']:.1f}",
                f"{mb:.2f}",
                f"{naive_e / run['epoch']:.1f}x",
            ]
        )
    for dtype, run in runs.items():
        rows.append([f"cache build (once, {dtype})", f"{run['build']:.2f}", "", f"{n / run['build']:.1f}", "", ""])
    default = runs["int8"]
    ratio = naive_e / default["epoch"]
    epochs20 = (20 * naive_e) / (default["build"] + 20 * default["epoch"])
    rows.append(
        [
            "20 epochs incl. cache build (int8)",
            f"{default['build'] + 20 * default['epoch']:.1f} vs {20 * naive_e:.1f}",
            "",
            "",
            "",
            f"{epochs20:.1f}x",
        ]
    )
    table(
        f"train epoch, median of {args.repeats} after a warm-up ({n} images, batch {args.batch_size}, "
        f"CPU {torch.get_num_threads()} threads)",
        ["loop", "seconds/epoch", "range", "images/s", "MB/image", "vs naive"],
        rows,
    )
    phases = default["phases"]
    step_total = sum(phases.values())
    print(
        "cached step (int8), where the time goes: "
        + ", ".join(f"{k} {v / step_total:.0%}" for k, v in sorted(phases.items(), key=lambda kv: -kv[1]))
    )
    print("heaviest operators of a cached epoch: " + ", ".join(f"{name} {share:.0%}" for name, share in ops))
    fp16_mb, int8_mb = (runs[d]["cache"].bytes_per_view() / 1e6 for d in ("float16", "int8"))
    print(f"cache on disk per image: fp16 {fp16_mb:.2f} MB, int8 {int8_mb:.2f} MB ({int8_mb / fp16_mb:.1%} of fp16)")
    print(f"ratio: {ratio:.1f}x")


if __name__ == "__main__":
    main()
