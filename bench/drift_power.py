"""Benchmark: how good is the drift alarm? False alarms on same-distribution splits, detection of
planted shifts, for the image statistics, the CLIP image embeddings, and both.

On the real photos (``DRYWALL_SAMPLE_DATA``), for each export: ``--trials`` random splits into a
reference (half the photos) and a current sample of n photos from the other half. Unshifted, a
flagged split is a false alarm; with a planted shift applied to the current photos (blur,
under-exposure, JPEG quality 15, a colour cast, half resolution) or with the current photos drawn
from the other export, a flagged split is a detection. The naive way is the image statistics alone
(what drift tested before embeddings), measured in the same run.

- image statistics (50% of columns): Evidently's per-column default test (K-S for these sizes) at
  p < 0.05 on the 13 image features; drift when at least half of them drift (the naive way: what
  drift decided before);
- image statistics (any column, Bonferroni): the same tests at p < 0.05 / 13; drift when any drifts.
- embeddings: Evidently's embeddings drift methods on the vision tower's pooled output
  (``drywall_core.model.runtime.image_embeddings``); each is listed.
- either: the Bonferroni image statistics or an embedding test flags.

No pretrained weights reach these machines: the embeddings come from the real-size CLIPSeg
architecture with random weights (``--model``; with real weights it is the same one-liner).

Usage: python -m bench.drift_power [--data DIR] [--trials 20] [--model random:clipseg-rd64] [--smoke]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cli import bench_parser  # noqa: E402 - stdlib only


def _parser() -> argparse.ArgumentParser:
    """The command line (stdlib only: `--help` answers before the heavy imports)."""
    ap = bench_parser(__doc__, data=True)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--photos", type=int, default=240, help="photos used per export (at most)")
    ap.add_argument("--model", default="random:clipseg-rd64", help="model whose vision tower embeds the photos")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "drywall-bench" / "embeddings")
    return ap


if __name__ == "__main__":
    _parser().parse_args()  # --help and bad options answer in a fraction of a second


import hashlib  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from bench._common import smoke_exports, table  # noqa: E402
from drywall_core.field.drift import IMAGE_FEATURES, extract_features, find_images  # noqa: E402
from drywall_core.field.embedding_drift import EMBEDDING_TESTS, embedding_test, feature_drift  # noqa: E402

NS = (20, 50, 100)


def _blur(im: Image.Image) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(2.5))


def _dark(im: Image.Image) -> Image.Image:
    return Image.eval(im, lambda v: int(v * 0.55))


def _cast(im: Image.Image) -> Image.Image:
    r, g, b = im.split()
    return Image.merge("RGB", (r.point(lambda v: min(255, int(v * 1.15 + 12))), g, b.point(lambda v: int(v * 0.85))))


def _half(im: Image.Image) -> Image.Image:
    return im.resize((im.width // 2, im.height // 2), Image.BILINEAR)


SHIFTS: dict[str, tuple[Callable[[Image.Image], Image.Image], int]] = {  # transform, JPEG quality saved at
    "blur": (_blur, 90),
    "under-exposure": (_dark, 90),
    "JPEG q15": (lambda im: im, 15),
    "colour cast": (_cast, 90),
    "half resolution": (_half, 90),
}


@dataclass
class Photos:
    """One export's photos as the bench sees them: features and embeddings per variant."""

    name: str
    features: dict[str, pd.DataFrame]  # variant ("none" or a shift) -> one row per photo, IMAGE_FEATURES
    embeddings: dict[str, np.ndarray]  # variant -> (photos, hidden)


def _variants(paths: list[Path], out: Path) -> dict[str, list[Path]]:
    """The photos as they are, and each planted shift of them written as JPEG."""
    out.mkdir(parents=True, exist_ok=True)
    variants = {"none": paths}
    for name, (fn, quality) in SHIFTS.items():
        folder = out / name.replace(" ", "-")
        folder.mkdir(exist_ok=True)
        written = []
        for p in paths:
            dst = folder / f"{p.stem}.jpg"
            if not dst.exists():
                with Image.open(p) as im:
                    fn(im.convert("RGB")).save(dst, quality=quality)
            written.append(dst)
        variants[name] = written
    return variants


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_photos(export: Path, n: int, store, work: Path, seed: int = 0) -> Photos:
    paths = [p for p in find_images(export) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    rng = np.random.default_rng(seed)
    paths = sorted(rng.choice(np.array(paths, dtype=object), size=min(n, len(paths)), replace=False).tolist())
    feats, embs = {}, {}
    for variant, files in _variants(paths, work / export.name).items():
        table_ = extract_features(files, progress=False)
        if len(table_.frame) != len(files):
            raise SystemExit(f"{export}: {len(files) - len(table_.frame)} unreadable photos in variant {variant}")
        feats[variant] = table_.frame[IMAGE_FEATURES].reset_index(drop=True)
        print(f"  {export.name} / {variant}: embedding {len(files)} photos", flush=True)
        embs[variant] = store.embed(files, [_sha(f) for f in files])
    return Photos(export.name, feats, embs)


def _trial(ref: Photos, cur: Photos, variant: str, r_idx: np.ndarray, c_idx: np.ndarray, share: float) -> dict:
    """What each method says of one trial: reference photos unshifted, current ones as ``variant``."""
    ref_f, cur_f = ref.features["none"].iloc[r_idx], cur.features[variant].iloc[c_idx]
    ref_e, cur_e = ref.embeddings["none"][r_idx], cur.embeddings[variant][c_idx]
    out = {
        NAIVE: feature_drift(ref_f, cur_f, share, "share").drift_detected,
        BONFERRONI: feature_drift(ref_f, cur_f, share, "bonferroni").drift_detected,
    }
    for name in EMBEDDING_TESTS:
        out[f"embeddings: {name}"] = embedding_test(ref_e, cur_e, name).drift_detected
    for name in EMBEDDING_TESTS:
        out[f"either: statistics (any column) or {name}"] = out[BONFERRONI] or out[f"embeddings: {name}"]
    return out


NAIVE = "image statistics (50% of columns)"
BONFERRONI = "image statistics (any column, Bonferroni)"


def run(exports: list[Photos], trials: int, share: float, ns: tuple[int, ...]) -> dict:
    """Flags per (export, method, case, n), one per trial."""
    rows: dict[tuple[str, str, str, int], list[bool]] = {}
    for k, photos in enumerate(exports):
        total = len(photos.embeddings["none"])
        half = total // 2
        cases = [("none", photos, "none")] + [(s, photos, s) for s in SHIFTS]
        cases += [(f"other export ({o.name})", o, "none") for o in exports if o is not photos]
        for n in ns:
            if n > total - half:
                continue  # too few photos for a current sample of n beside a reference half
            for j, (case, source, variant) in enumerate(cases):
                rng = np.random.default_rng([k, j, n])
                for _ in range(trials):
                    idx = rng.permutation(total)
                    if source is photos:
                        c_idx = idx[half : half + n]
                    else:
                        c_idx = rng.permutation(len(source.embeddings["none"]))[:n]
                    for method, hit in _trial(photos, source, variant, idx[:half], c_idx, share).items():
                        rows.setdefault((photos.name, method, case, n), []).append(hit)
    return rows


def main() -> None:
    args = _parser().parse_args()
    from drywall_core.model.embeddings import EmbeddingStore
    from drywall_core.model.load import load_model
    from drywall_core.model.runtime import for_inference

    ns = NS
    if args.smoke:
        from bench._common import bench_model

        args.data, args.trials, args.photos, ns = smoke_exports(), 2, 16, (4,)
        loaded = for_inference(bench_model(smoke=True), "int8")
        args.cache = Path(tempfile.mkdtemp(prefix="bench-emb-"))
    else:
        loaded = for_inference(load_model(args.model), "int8")
    store = EmbeddingStore(args.cache, loaded)
    work = Path(tempfile.mkdtemp(prefix="bench-drift-power-"))
    exports = sorted(p for p in args.data.glob("*.coco") if p.is_dir())
    if len(exports) < 2:
        raise SystemExit(f"need two *.coco exports under {args.data}")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        photos = [load_photos(e, args.photos, store, work) for e in exports]
        rows = run(photos, args.trials, 0.5, ns)
    report(rows, ns, args, loaded)


def report(rows: dict, ns: tuple[int, ...], args, loaded) -> None:
    methods = list(dict.fromkeys(m for _, m, _, _ in rows))
    for export in dict.fromkeys(e for e, _, _, _ in rows):
        cases = list(dict.fromkeys(c for e, _, c, _ in rows if e == export))
        body = []
        for m in methods:
            for c in cases:
                cells = []
                for n in ns:
                    hits = rows.get((export, m, c, n))
                    cells.append("-" if hits is None else f"{100 * np.mean(hits):.0f}%")
                body.append([m, "false alarms" if c == "none" else c, *cells])
        table(
            f"drift alarms on {export}: share of {args.trials} trials flagged (reference: half the photos)",
            ["method", "shift", *[f"n={n}" for n in ns]],
            body,
        )
    n50 = 50 if 50 in ns else ns[0]
    lines = []
    for m in methods:
        fa = [np.mean(h) for (e, mm, c, n), h in rows.items() if mm == m and c == "none" and n == n50]
        det = [np.mean(h) for (e, mm, c, n), h in rows.items() if mm == m and c != "none" and n == n50]
        lines.append((m, 100 * max(fa), 100 * min(det)))
    table(
        f"at n={n50}: worst false-alarm rate and lowest detection rate over the planted shifts",
        ["method", "false alarms (worst export)", "detected (lowest shift)"],
        [[m, f"{fa:.0f}%", f"{d:.0f}%"] for m, fa, d in lines],
    )
    naive = next(x for x in lines if x[0] == NAIVE)
    ok = [x for x in lines if x[1] <= 5] or lines
    best = max(ok, key=lambda x: (x[2], -x[1]))
    print(
        f"embeddings from {loaded.base_id} ({'random weights' if 'random' in loaded.base_id else 'weights as given'})"
    )
    print(f"ratio: lowest detection {best[2]:.0f}% ({best[0]}) vs {naive[2]:.0f}% ({NAIVE}, the naive way)")
    print(f"default: false alarms {best[1]:.0f}%, detected {best[2]:.0f}% at n={n50} ({best[0]})")


if __name__ == "__main__":
    main()
