"""Benchmark: diverse labelling batches against uncertainty-only batches, on field photos with
planted near-duplicates.

The field photos are the real crack export's (``DRYWALL_SAMPLE_DATA``); ``--origins`` of them get
three near-copies each (a centre crop of 85%, the photo at half size, a JPEG recompression at
quality 30), as a site team's re-shots and re-uploads look. Every photo is run through the model
once (``runtime.probabilities`` for its uncertain pixel share, the label queue's ranking, and
``runtime.image_embeddings``), then a batch of ``--k`` is picked two ways:

- naive: the ``k`` most uncertain photos (what the label queue did before);
- ours: ``drywall_core.field.diversity.diverse_order`` among the 3k most uncertain, near-duplicates
  (centred cosine above ``--max-similarity``, the label queue's setting) skipped, greedy coverage.

Per way: duplicate pairs in the batch (two copies of one photo), coverage (mean centred cosine
distance from every candidate, the 3k most uncertain, to its nearest picked one: lower is better
covered; and the same over every field photo) and the batch's mean uncertainty. The ratio is the
naive coverage distance over ours. Goal: no duplicate pair, better coverage, mean uncertainty
within 10% of the naive batch's. It also prints how close
the copies of one photo are in embedding space against distinct photos: whether the similarity
setting can tell them apart depends on the encoder's weights. No pretrained weights reach these
machines: ``--model`` defaults to the real-size architecture with random weights; with real ones it
is ``python -m bench.label_diversity --model CIDAS/clipseg-rd64-refined``.

Usage: python -m bench.label_diversity [--data DIR] [--model random:clipseg-rd64] [--origins 30]
       [--k 20] [--max-similarity 0.95] [--smoke]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cli import bench_parser  # noqa: E402 - stdlib only

SMOKE_HELP = "tiny model, a few synthetic photos: checks that the bench runs on today's code (CI); measures nothing"


def _parser() -> argparse.ArgumentParser:
    """The command line (stdlib only: `--help` answers before the heavy imports)."""
    ap = bench_parser(__doc__, SMOKE_HELP, data=True)
    ap.add_argument("--model", default="random:clipseg-rd64")
    ap.add_argument("--origins", type=int, default=30, help="photos that get three near-copies each")
    ap.add_argument("--k", type=int, default=20, help="batch size")
    ap.add_argument("--max-similarity", type=float, default=0.95, help="DRYWALL_LABEL_QUEUE__MAX_SIMILARITY's default")
    return ap


if __name__ == "__main__":
    _parser().parse_args()  # --help and bad options answer in a fraction of a second


import io  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from itertools import combinations  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bench._common import table  # noqa: E402
from drywall_core.base.config import LabelQueueConfig  # noqa: E402
from drywall_core.data.images import open_rgb  # noqa: E402
from drywall_core.field.diversity import coverage, diverse_order, unit  # noqa: E402
from drywall_core.field.predictions import mask_stats  # noqa: E402
from drywall_core.model.runtime import for_inference, image_embeddings, probabilities_for  # noqa: E402

PROMPT = "segment crack"
POOL_FACTOR = LabelQueueConfig().pool_factor  # the label queue's default pool: 3 x the batch


@dataclass(frozen=True)
class Photo:
    image: Image.Image
    group: int  # photos of one group are copies of one original
    kind: str  # original, crop, half size, jpeg q30


def near_copies(im: Image.Image) -> list[tuple[str, Image.Image]]:
    w, h = im.size
    dx, dy = int(w * 0.075), int(h * 0.075)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=30)
    buf.seek(0)
    return [
        ("crop", im.crop((dx, dy, w - dx, h - dy))),
        ("half size", im.resize((max(w // 2, 1), max(h // 2, 1)), Image.BILINEAR)),
        ("jpeg q30", Image.open(buf).convert("RGB")),
    ]


def field_photos(paths: list[Path], origins: int) -> list[Photo]:
    out = []
    for g, p in enumerate(paths):
        im = open_rgb(p)
        out.append(Photo(im, g, "original"))
        if g < origins:
            out += [Photo(c, g, kind) for kind, c in near_copies(im)]
    return out


@dataclass(frozen=True)
class Batch:
    way: str
    picked: list[int]
    duplicate_pairs: int
    coverage: float  # over the candidate pool (the 3k most uncertain: what the queue chooses among)
    coverage_all: float  # over every field photo
    mean_uncertainty: float


def batch(
    way: str, picked: list[int], pool: list[int], photos: list[Photo], vectors: np.ndarray, uncertainty: np.ndarray
) -> Batch:
    pairs = sum(photos[a].group == photos[b].group for a, b in combinations(picked, 2))
    in_pool = [pool.index(i) for i in picked]
    return Batch(
        way,
        picked,
        pairs,
        coverage(vectors[pool], in_pool),
        coverage(vectors, picked),
        float(uncertainty[picked].mean()),
    )


def similarity_spread(photos: list[Photo], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred cosine similarity of each copy to its original, and of distinct originals to each other."""
    c = unit(vectors - vectors.mean(axis=0))
    sim = c @ c.T
    originals = {p.group: i for i, p in enumerate(photos) if p.kind == "original"}
    copies = np.array([sim[i, originals[p.group]] for i, p in enumerate(photos) if p.kind != "original"])
    idx = list(originals.values())
    distinct = np.array([sim[a, b] for a, b in combinations(idx, 2)])
    return copies, distinct


def main() -> None:
    args = _parser().parse_args()
    from bench._common import bench_model

    if args.smoke:
        from bench._common import smoke_exports

        paths = sorted((smoke_exports() / "synthetic-cracks.v1i.coco").rglob("*.jpg"))[:8]
        loaded, origins, k = bench_model(smoke=True), 3, 4
    else:
        paths = sorted((args.data / "cracks.v1i.coco" / "valid").glob("*.jpg"))
        if not paths:
            sys.exit(f"error: no crack photos under {args.data / 'cracks.v1i.coco' / 'valid'}")
        if args.model == "random:clipseg-rd64":
            loaded = bench_model()
        else:
            from drywall_core.model.load import load_model

            loaded = load_model(args.model)
        origins, k = args.origins, args.k
    loaded = for_inference(loaded, "int8")
    photos = field_photos(paths, origins)
    images = [p.image for p in photos]
    probs = probabilities_for(loaded, images, PROMPT)
    uncertainty = np.array([mask_stats(p, 0.5, entropy=False)["uncertain_share"] for p in probs])
    vectors = image_embeddings(loaded, images)
    ranked = sorted(range(len(photos)), key=lambda i: (-uncertainty[i], i))
    pool = ranked[: k * POOL_FACTOR]
    naive = batch("uncertainty only", ranked[:k], pool, photos, vectors, uncertainty)
    order, skipped = diverse_order(vectors[pool], k, None, args.max_similarity)
    ours = batch("diverse (ours)", [pool[i] for i in order], pool, photos, vectors, uncertainty)
    rows = [
        [b.way, str(len(b.picked)), str(b.duplicate_pairs), f"{b.coverage:.4f}", f"{b.coverage_all:.4f}"]
        + [f"{b.mean_uncertainty:.4f}"]
        for b in (naive, ours)
    ]
    ratio = naive.coverage / ours.coverage if ours.coverage > 0 else float("inf")
    ratio_all = naive.coverage_all / ours.coverage_all if ours.coverage_all > 0 else float("inf")
    rel = ours.mean_uncertainty / naive.mean_uncertainty if naive.mean_uncertainty > 0 else float("nan")
    rows.append(["ratio (naive / ours distance)", "", "", f"{ratio:.2f}x", f"{ratio_all:.2f}x", f"{rel:.2f} of naive"])
    table(
        f"Labelling batches of {k} from {len(photos)} field photos ({origins} with 3 near-copies each)",
        ["way", "photos", "duplicate pairs", f"coverage distance ({len(pool)} candidates)", "over all photos"]
        + ["mean uncertainty"],
        rows,
    )
    copies, distinct = similarity_spread(photos, vectors)
    print(
        f"centred cosine, copy to its original: min {copies.min():.3f}, median {np.median(copies):.3f}; "
        f"distinct photos: median {np.median(distinct):.3f}, p99 {np.quantile(distinct, 0.99):.3f}, "
        f"max {distinct.max():.3f} (near-duplicate above {args.max_similarity}); "
        f"{len(skipped)} skipped as near-duplicates"
    )
    print(
        f"goal: no duplicate pair (ours {ours.duplicate_pairs}, naive {naive.duplicate_pairs}), better coverage "
        f"({ratio:.2f}x), mean uncertainty within 10% ({100 * (rel - 1):+.0f}%)"
    )


if __name__ == "__main__":
    main()
