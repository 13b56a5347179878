"""Benchmark: segmentation quality beside published results for the same two Roboflow datasets.

For each export in ``--data`` (``DRYWALL_SAMPLE_DATA``) and each input size (``--sizes``, default
352 and 512 px), the model's canonical prompt is scored on two held-out sets:

- roboflow: the export's own held-out folders (``valid`` and ``test``), as public results report
  it. Roboflow splits after augmentation, so a held-out image may be a copy of a training photo:
  the ``leaked`` column counts the held-out images whose source photo is also in ``train``;
- leakage-free: the validation side of the project's split by source photo
  (``drywall_core.data.splits``, the ``DRYWALL_SPLIT_SEED`` / ``DRYWALL_VAL_FRACTION`` a training run
  uses), so no source photo is on both sides.

Thresholds are tuned on validation without scoring an image at a threshold tuned on itself: each
set is halved by source photo, a threshold is tuned on each half (best mean IoU over 0.1..0.9) and
applied to the other. The naive way, measured in the same run, is the fixed threshold 0.5; the ratio
column is tuned IoU over IoU at 0.5. Metrics are means over images (mIoU, mean Dice), the
evaluation's convention (an empty prediction of an empty mask scores 1).

Published figures (per-prompt IoU on these datasets and prompts): a decoder fine-tune at 512 px
(crack 0.461, taping 0.519), another fine-tune (crack 0.454, taping 0.630) and zero-shot CLIPSeg
(crack 0.218, taping 0.020). No pretrained weights reach these machines: run it where they are, e.g.
``python -m bench.quality --model CIDAS/clipseg-rd64-refined`` for zero-shot or ``--model`` a
promoted artifact folder for ours.

Usage: python -m bench.quality --model MODEL [--data DIR] [--sizes 352,512] [--limit N]
       [--precision fp32|int8] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/NAME.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._cli import bench_parser  # noqa: E402 - stdlib only

SMOKE_HELP = (
    "tiny model, synthetic exports, 4 images a set at 128 and 160 px: checks that the bench runs on today's code (CI)"
)


def _parser() -> argparse.ArgumentParser:
    """The command line (stdlib only: `--help` answers before the heavy imports)."""
    ap = bench_parser(__doc__, SMOKE_HELP, data=True)
    ap.add_argument("--model", help="model folder, fine-tuned artifact or hub id (required unless --smoke)")
    ap.add_argument("--sizes", default="352,512", help="input sizes in px, comma-separated")
    ap.add_argument("--limit", type=int, default=0, help="at most N images per set (0: all)")
    ap.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    return ap


if __name__ == "__main__":
    _args = _parser().parse_args()  # --help and bad options answer in a fraction of a second
    if not _args.model and not _args.smoke:
        _parser().error("--model is required (a model folder, artifact or hub id), or --smoke")


from collections.abc import Iterator, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench._common import table  # noqa: E402
from drywall_core.base.config import Settings  # noqa: E402
from drywall_core.data.datasets import DatasetSpec, load_registry  # noqa: E402
from drywall_core.data.exports import Export, open_export  # noqa: E402
from drywall_core.data.images import open_rgb  # noqa: E402
from drywall_core.data.masks import render_masks  # noqa: E402
from drywall_core.data.splits import source_of, split_by_source  # noqa: E402
from drywall_core.data.validation import resolve_dataset  # noqa: E402
from drywall_core.model.load import LoadedModel  # noqa: E402
from drywall_core.model.metrics import THRESHOLDS  # noqa: E402
from drywall_core.model.runtime import for_inference, probabilities_for  # noqa: E402

# Published per-prompt IoU for these two datasets, keyed by the registry's canonical prompt.
PUBLISHED: dict[str, dict[str, float]] = {
    "segment crack": {"fine-tune 512": 0.461, "fine-tune (other)": 0.454, "zero-shot": 0.218},
    "segment taping area": {"fine-tune 512": 0.519, "fine-tune (other)": 0.630, "zero-shot": 0.020},
}
SOURCES = ("fine-tune 512", "fine-tune (other)", "zero-shot")
HELD_OUT = ("valid", "test")


@dataclass(frozen=True)
class Item:
    image: Path
    mask: Path
    source: str


@dataclass(frozen=True)
class Scores:
    """One image's IoU and Dice at every threshold of ``THRESHOLDS``."""

    iou: np.ndarray
    dice: np.ndarray


@dataclass(frozen=True)
class Row:
    dataset: str
    prompt: str
    split: str
    size: int
    images: int
    leaked: int
    iou_fixed: float
    dice_fixed: float
    iou_tuned: float
    dice_tuned: float
    thresholds: tuple[float, float]


def scores(prob: np.ndarray, gt: np.ndarray) -> Scores:
    """IoU and Dice of ``prob >= t`` for every threshold, by the metrics module's empty-mask rule."""
    g = gt.astype(bool)
    ious, dices = [], []
    n_gt = int(g.sum())
    for t in THRESHOLDS:
        p = prob >= t
        inter, n_p = int(np.logical_and(p, g).sum()), int(p.sum())
        union = n_p + n_gt - inter
        ious.append(1.0 if union == 0 else inter / union)
        dices.append(1.0 if n_p + n_gt == 0 else 2 * inter / (n_p + n_gt))
    return Scores(np.array(ious), np.array(dices))


def half_of(source: str) -> int:
    """The half (0 or 1) a source photo's images are in, stable across runs."""
    return hashlib.sha256(source.encode()).digest()[0] & 1


def cross_fit(items: Sequence[Item], per_image: Sequence[Scores]) -> tuple[float, float, tuple[float, float]]:
    """Mean IoU and Dice with each half scored at the threshold tuned on the other half; a half
    whose other half is empty is scored at 0.5 (no image is ever scored at a threshold tuned on itself)."""
    halves = [half_of(it.source) for it in items]
    ious, dices = np.stack([s.iou for s in per_image]), np.stack([s.dice for s in per_image])
    tuned: list[float] = []
    iou_out, dice_out = np.zeros(len(items)), np.zeros(len(items))
    for h in (0, 1):
        train = np.array([x != h for x in halves])
        test = ~train
        k = _best(ious[train].mean(axis=0)) if train.any() else THRESHOLDS.index(0.5)
        tuned.append(THRESHOLDS[k])
        iou_out[test], dice_out[test] = ious[test, k], dices[test, k]
    return float(iou_out.mean()), float(dice_out.mean()), (tuned[0], tuned[1])


def _best(mean_iou: np.ndarray) -> int:
    """The best threshold's index; ties go to the one nearest 0.5."""
    return max(range(len(THRESHOLDS)), key=lambda i: (round(float(mean_iou[i]), 12), -abs(THRESHOLDS[i] - 0.5)))


def train_sources(export: Export) -> set[str]:
    return {source_of(i["file_name"]) for i in export.splits["train"].images} if "train" in export.splits else set()


def roboflow_items(export: Export, masks: Path) -> list[Item]:
    """The export's own held-out images (``valid``, ``test``)."""
    return [
        Item(split.dir / i["file_name"], masks / name / f"{Path(i['file_name']).stem}.png", source_of(i["file_name"]))
        for name in HELD_OUT
        if (split := export.splits.get(name)) is not None
        for i in split.images
    ]


def leakage_free_items(export: Export, masks: Path, settings: Settings) -> list[Item]:
    plan = split_by_source(export, seed=settings.split_seed, val_fraction=settings.val_fraction)
    return [
        Item(
            export.splits[it.export_split].dir / it.file_name,
            masks / it.export_split / f"{Path(it.file_name).stem}.png",
            it.source,
        )
        for it in plan.val
    ]


@contextlib.contextmanager
def input_size(loaded: LoadedModel, px: int) -> Iterator[None]:
    """The model fed ``px`` x ``px`` images (the position embeddings are interpolated)."""
    ip = loaded.processor.image_processor
    before = ip.size
    ip.size = {"height": px, "width": px}
    try:
        yield
    finally:
        ip.size = before


class Scorer:
    """Per-image scores at one input size, each image run once however many sets hold it."""

    def __init__(self, loaded: LoadedModel, batch_size: int = 4) -> None:
        self.loaded, self.batch_size = loaded, batch_size
        self.memo: dict[tuple[str, int, str], Scores] = {}

    def score(self, items: Sequence[Item], prompt: str, px: int, label: str) -> list[Scores]:
        todo = [it for it in items if (str(it.image), px, prompt) not in self.memo]
        with input_size(self.loaded, px), tqdm(total=len(todo), desc=label, unit="img", disable=None) as bar:
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                probs = probabilities_for(self.loaded, [open_rgb(it.image) for it in chunk], prompt)
                for it, prob in zip(chunk, probs, strict=True):
                    with Image.open(it.mask) as m:
                        gt = np.asarray(m.convert("L")) > 127
                    self.memo[(str(it.image), px, prompt)] = scores(prob, gt)
                bar.update(len(chunk))
        return [self.memo[(str(it.image), px, prompt)] for it in items]


def measure(scorer: Scorer, spec: DatasetSpec, split: str, items: list[Item], leaked: int, px: int) -> Row:
    per_image = scorer.score(items, spec.prompt, px, f"{spec.name} {split} {px}px")
    fixed = THRESHOLDS.index(0.5)
    iou_t, dice_t, tuned = cross_fit(items, per_image)
    return Row(
        spec.name,
        spec.prompt,
        split,
        px,
        len(items),
        leaked,
        float(np.mean([s.iou[fixed] for s in per_image])),
        float(np.mean([s.dice[fixed] for s in per_image])),
        iou_t,
        dice_t,
        tuned,
    )


def _limit(items: list[Item], n: int) -> list[Item]:
    return sorted(items, key=lambda it: hashlib.sha256(it.image.name.encode()).hexdigest())[:n] if n else items


def run(
    loaded: LoadedModel, exports: Sequence[Path], sizes: Sequence[int], limit: int, settings: Settings
) -> list[Row]:
    registry = load_registry(settings.datasets_file)
    scorer, rows = Scorer(loaded), []
    for root in exports:
        export = open_export(root)
        spec = resolve_dataset(export, registry, None)
        masks = Path(tempfile.mkdtemp(prefix="bench-quality-masks-"))
        render_masks(export, masks, progress=False)
        rf_items, seen = _limit(roboflow_items(export, masks), limit), train_sources(export)
        leaked = sum(it.source in seen for it in rf_items)
        sets = [
            ("roboflow", rf_items, leaked),
            ("leakage-free", _limit(leakage_free_items(export, masks, settings), limit), 0),
        ]
        for px in sizes:
            rows += [measure(scorer, spec, split, items, lk, px) for split, items, lk in sets if items]
    return rows


def print_rows(rows: Sequence[Row], model: str) -> None:
    columns = ["dataset", "split", "px", "images", "leaked", "IoU@0.5", "IoU", "Dice", "t", "ratio"]
    columns += ["pub FT512", "pub FT", "pub 0-shot"]
    body = []
    for r in sorted(rows, key=lambda r: (r.dataset, r.split != "roboflow", r.size)):
        pub = PUBLISHED.get(r.prompt, {})
        ratio = f"{r.iou_tuned / r.iou_fixed:.2f}x" if r.iou_fixed > 0 else "-"
        body.append(
            [r.dataset, r.split, str(r.size), str(r.images), str(r.leaked), f"{r.iou_fixed:.3f}", f"{r.iou_tuned:.3f}"]
            + [f"{r.dice_tuned:.3f}", "/".join(f"{t:.1f}" for t in r.thresholds), ratio]
            + [f"{pub[s]:.3f}" if s in pub else "-" for s in SOURCES]
        )
    table(f"Quality of {model}: mean IoU and Dice of the canonical prompt", columns, body, width=140)
    print(
        "IoU, Dice: at the threshold t tuned on the other half of the set (by source photo); ratio: that IoU over"
        " IoU at 0.5. pub: published IoU for the prompt (FT512: decoder fine-tune at 512 px; FT: another"
        " fine-tune; 0-shot: zero-shot CLIPSeg). leaked: held-out images whose source photo is in train."
    )


def main() -> None:
    args = _parser().parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 32:
        sys.exit(f"error: --sizes takes input sizes of at least 32 px, not '{args.sizes}'")
    exports = sorted(p for p in args.data.glob("*.coco") if p.is_dir()) if args.data.is_dir() else []
    limit = args.limit
    if args.smoke:
        from bench._common import bench_model, smoke_exports

        loaded, name = bench_model(smoke=True), "the tiny random model (smoke)"
        exports, limit, sizes = sorted(smoke_exports().iterdir()), limit or 4, [128, 160]
    else:
        from drywall_core.model.load import load_model

        loaded, name = load_model(args.model), args.model
    if not exports:
        sys.exit(f"error: no Roboflow COCO export (*.coco folder) in {args.data}")
    rows = run(for_inference(loaded, args.precision), exports, sizes, limit, Settings())
    print_rows(rows, name)


if __name__ == "__main__":
    main()
