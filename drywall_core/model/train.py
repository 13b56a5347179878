"""Fine-tune the CLIPSeg decoder on the frozen-activation cache.

Every epoch runs only the decoder (1.13 M parameters at real size) over cached activations:
the 149.6 M-parameter backbone runs once per image (and flipped view) in total, not once per
image per epoch. Mixed supervision (strong BCE + Dice, weak 0.5 x BCE), a prompt sampled from the
task's synonyms at every step, AdamW with a cosine schedule, gradient clipping, early stopping on
validation mIoU, a checkpoint every epoch with exact resume, seeded and deterministic on CPU,
bf16 autocast on CUDA.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from drywall_core.base.config import TrainConfig
from drywall_core.base.errors import InputError
from drywall_core.base.fsutil import atomic_open, atomic_write_text
from drywall_core.data.datasets import DatasetSpec
from drywall_core.data.samples import Sample
from drywall_core.model.cache import ActivationCache, CacheItem
from drywall_core.model.load import DECODER_FILE, MANIFEST_FILE, LoadedModel, decoder_state, save_decoder
from drywall_core.model.losses import mixed_loss
from drywall_core.model.runtime import decode, text_embeddings

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
TARGETS = ".targets.u8"  # the run's training targets while it trains (TargetFile); removed after


@dataclass
class View:
    """One trainable view: an image (or its mirror) with its target at model resolution."""

    key: str
    target: int  # row of the run's TargetFile: uint8 (S, S) in {0..255}
    dataset: str
    strong: bool


class TargetFile:
    """Training targets at model resolution in one file of the run, read back per batch.

    Held in RAM they grow with the dataset (124 KB a view at 352 px: 2 GB at 16,000 images with
    flips); read with ``pread`` per batch they cost a batch's worth, and the OS page cache keeps
    the file warm when memory allows. Not a memory map: mapped pages count toward the process's
    resident memory as soon as an epoch has touched them.
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size, self.count = Path(path), size, 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    @property
    def row_bytes(self) -> int:
        return self.size * self.size

    def append(self, target: np.ndarray) -> int:
        data = np.ascontiguousarray(target, dtype=np.uint8).tobytes()
        if len(data) != self.row_bytes:
            raise ValueError(f"target of {len(data)} bytes, expected {self.row_bytes}")
        os.pwrite(self._fd, data, self.count * self.row_bytes)
        self.count += 1
        return self.count - 1

    def read(self, rows: Sequence[int]) -> np.ndarray:
        out = np.empty((len(rows), self.size, self.size), dtype=np.uint8)
        for i, r in enumerate(rows):
            out[i] = np.frombuffer(os.pread(self._fd, self.row_bytes, r * self.row_bytes), dtype=np.uint8).reshape(
                self.size, self.size
            )
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self.path.unlink(missing_ok=True)


@dataclass
class TrainResult:
    out_dir: Path
    best_epoch: int
    best_val_miou: float
    epochs_run: int
    stopped_early: bool
    history: list[dict] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _target(mask_path: Path, size: int, flip: bool) -> np.ndarray:
    with Image.open(mask_path) as m:
        t = m.convert("L").resize((size, size), Image.BILINEAR)
    arr = np.asarray(t, dtype=np.uint8)
    return arr[:, ::-1].copy() if flip else arr


def _prepare_views(
    samples: Sequence[Sample], specs: dict[str, DatasetSpec], size: int, flip: bool, targets: TargetFile
) -> tuple[list[CacheItem], list[str], list[list[View]]]:
    """Cache items plus, per sample, its views (original, and mirrored when ``flip``); targets go to ``targets``."""
    items, keys, views = [], [], []
    for s in samples:
        if not s.mask.is_file():
            raise InputError(f"{s.mask}: mask missing for {s.image}")
        strong = specs[s.dataset].label_strength == "strong"
        per = []
        for f in (False, True) if flip else (False,):
            item = CacheItem(s.image, f, s.sha256)
            key = item.key
            items.append(item)
            keys.append(key)
            per.append(View(key, targets.append(_target(s.mask, size, f)), s.dataset, strong))
        views.append(per)
    return items, keys, views


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    return {
        "gen": gen.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(gen: torch.Generator, state: dict[str, Any]) -> None:
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _seed_all(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def _batch(cache: ActivationCache, targets: TargetFile, views: Sequence[View], device: torch.device):
    acts = cache.get([v.key for v in views]).to(device)
    rows = targets.read([v.target for v in views])
    target = torch.from_numpy(rows).to(device=device, dtype=torch.float32) / 255.0
    strong = torch.tensor([v.strong for v in views], device=device)
    return acts, target, strong


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def validate(
    model: Any,
    cache: ActivationCache,
    targets: TargetFile,
    views: Sequence[View],
    text: torch.Tensor,
    prompt_index: dict[str, int],
    cfg: TrainConfig,
    device: torch.device,
) -> dict[str, Any]:
    """Validation loss and per-dataset mIoU (threshold 0.5, at model resolution, canonical prompts)."""
    model.decoder.eval()
    ious: dict[str, list[float]] = {}
    losses = []
    for start in range(0, len(views), cfg.batch_size):
        chunk = views[start : start + cfg.batch_size]
        acts, target, strong = _batch(cache, targets, chunk, device)
        cond = text[[prompt_index[v.dataset] for v in chunk]]
        with _autocast(device):
            logits = decode(model, acts, cond).float()
        losses.append(
            float(mixed_loss(logits, target, strong, cfg.weak_weight, cfg.dice_weight, cfg.pos_weight)) * len(chunk)
        )
        pred, gt = logits >= 0, target >= 0.5
        inter = (pred & gt).flatten(1).sum(1).float()
        union = (pred | gt).flatten(1).sum(1).float()
        per = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        for v, value in zip(chunk, per.tolist(), strict=True):
            ious.setdefault(v.dataset, []).append(value)
    model.decoder.train()
    per_ds = {k: float(np.mean(v)) for k, v in sorted(ious.items())}
    return {
        "val_loss": float(sum(losses) / max(len(views), 1)),
        "val_miou": float(np.mean(list(per_ds.values()))) if per_ds else 0.0,
        "val_miou_per_dataset": per_ds,
    }


def training_curve(history: Sequence[dict], path: Path) -> None:
    """Loss and validation mIoU per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(ep, [h["train_loss"] for h in history], marker="o", label="train")
    ax[0].plot(ep, [h["val_loss"] for h in history], marker="o", label="val")
    ax[0].set(title="loss", xlabel="epoch")
    ax[0].legend()
    ax[1].plot(ep, [h["val_miou"] for h in history], marker="o", color="tab:green")
    ax[1].set(title="validation mIoU @0.5", xlabel="epoch", ylim=(0, 1))
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def train(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    specs: dict[str, DatasetSpec],
    cfg: TrainConfig,
    out_dir: Path,
    cache_root: Path,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[dict], None] | None = None,
    on_cache: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train the decoder in place (best epoch's weights at the end).

    Writes ``checkpoint.pt`` (every epoch), ``metrics.jsonl``, ``training_curve.png`` and
    ``train_summary.json`` to ``out_dir``; the artifact is written by :func:`write_artifact`.
    """
    if loaded.precision != "fp32":
        raise InputError(f"cannot train a {loaded.precision} model: it was quantized for inference")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_s = [s for s in samples if s.side == "train"]
    val_s = [s for s in samples if s.side == "val"]
    if not train_s or not val_s:
        raise InputError(f"need training and validation images (got {len(train_s)} train, {len(val_s)} val)")
    targets = TargetFile(out_dir / TARGETS, loaded.output_size)
    try:
        return _fit(
            loaded, train_s, val_s, specs, cfg, out_dir, cache_root, targets, resume, progress, on_epoch_end, on_cache
        )
    finally:
        targets.close()


def _fit(
    loaded: LoadedModel,
    train_s: list[Sample],
    val_s: list[Sample],
    specs: dict[str, DatasetSpec],
    cfg: TrainConfig,
    out_dir: Path,
    cache_root: Path,
    targets: TargetFile,
    resume: bool,
    progress: bool,
    on_epoch_end: Callable[[dict], None] | None,
    on_cache: Callable[[int, int], None] | None = None,
) -> TrainResult:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = loaded.model.to(device)
    model.clip.eval()
    model.decoder.train()
    size = loaded.output_size

    # 1. the cache: backbone once per image/view
    train_items, train_keys, train_views = _prepare_views(train_s, specs, size, cfg.flip, targets)
    val_items, val_keys, val_views = _prepare_views(val_s, specs, size, False, targets)
    cache = ActivationCache(cache_root, loaded, cfg.cache_dtype)
    t0 = t_start = time.perf_counter()
    items, keys = train_items + val_items, train_keys + val_keys
    stats = cache.build(items, cfg.cache_batch_size, progress, keys=keys, on_progress=on_cache)
    cache_seconds = time.perf_counter() - t0
    val_flat = [v[0] for v in val_views]

    # 2. prompts: every synonym once through the frozen text tower
    prompts = sorted({p for spec in specs.values() for p in spec.prompts})
    text = text_embeddings(loaded, prompts).to(device)
    pidx = {p: i for i, p in enumerate(prompts)}
    synonyms = {name: torch.tensor([pidx[p] for p in spec.prompts]) for name, spec in specs.items()}
    canonical = {name: pidx[spec.prompt] for name, spec in specs.items()}

    gen = _seed_all(cfg.seed)
    params = [p for p in model.decoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_views) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)

    start_epoch, best, best_epoch, bad, history = 1, -1.0, 0, 0, []
    best_state = decoder_state(model)
    ckpt_path = out_dir / CHECKPOINT
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck["fingerprint"] != loaded.fingerprint or ck["config"] != cfg.model_dump():
            raise InputError(f"{ckpt_path}: checkpoint is for another model or configuration; cannot resume")
        model.decoder.load_state_dict(ck["decoder"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        _set_rng_state(gen, ck["rng"])
        start_epoch, best, best_epoch, bad = ck["epoch"] + 1, ck["best"], ck["best_epoch"], ck["bad_epochs"]
        history, best_state = ck["history"], ck["best_state"]
        log.info("resuming after epoch %d (best val mIoU %.4f at epoch %d)", ck["epoch"], best, best_epoch)
    elif (out_dir / METRICS).exists():
        (out_dir / METRICS).unlink()

    stopped_early = bad >= cfg.patience
    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg.epochs + 1):
        if stopped_early:
            break
        t_epoch = time.perf_counter()
        order = torch.randperm(len(train_views), generator=gen).tolist()
        view_pick = torch.randint(0, 2 if cfg.flip else 1, (len(train_views),), generator=gen).tolist()
        total, n = 0.0, 0
        bar = tqdm(
            range(0, len(order), cfg.batch_size),
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="step",
            disable=None if progress else True,
            leave=False,
        )
        for start in bar:
            idx = order[start : start + cfg.batch_size]
            views = [train_views[i][view_pick[i]] for i in idx]
            acts, target, strong = _batch(cache, targets, views, device)
            choice = [
                synonyms[v.dataset][torch.randint(len(synonyms[v.dataset]), (1,), generator=gen)].item() for v in views
            ]
            cond = text[choice]
            with _autocast(device):
                logits = decode(model, acts, cond).float()
            loss = mixed_loss(logits, target, strong, cfg.weak_weight, cfg.dice_weight, cfg.pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            sched.step()
            total += loss.item() * len(views)
            n += len(views)
            bar.set_postfix(loss=f"{total / n:.4f}")
        bar.close()
        row = {
            "epoch": epoch,
            "train_loss": total / n,
            "lr": sched.get_last_lr()[0],
            **validate(model, cache, targets, val_flat, text, canonical, cfg, device),
            "seconds": round(time.perf_counter() - t_epoch, 3),
        }
        if row["val_miou"] > best + 1e-9:
            best, best_epoch, bad, best_state = row["val_miou"], epoch, 0, decoder_state(model)
        else:
            bad += 1
        stopped_early = bad >= cfg.patience
        history.append(row)
        with open(out_dir / METRICS, "a") as f:
            f.write(json.dumps(row) + "\n")
        _save_checkpoint(
            ckpt_path, model, opt, sched, gen, cfg, loaded, epoch, best, best_epoch, bad, history, best_state
        )
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, val mIoU %.4f (%.1fs)",
            epoch,
            row["train_loss"],
            row["val_loss"],
            row["val_miou"],
            row["seconds"],
        )
        if on_epoch_end is not None:
            on_epoch_end(row)

    model.decoder.load_state_dict(best_state)
    training_curve(history, out_dir / "training_curve.png")
    summary = {
        "best_epoch": best_epoch,
        "best_val_miou": best,
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "train_images": len(train_s),
        "val_images": len(val_s),
        "cache": {**stats, "seconds": round(cache_seconds, 2)},
        "config": cfg.model_dump(),
        "datasets": {k: v.model_dump() for k, v in specs.items()},
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    atomic_write_text(out_dir / "train_summary.json", json.dumps(summary, indent=2))
    return TrainResult(out_dir, best_epoch, best, len(history), stopped_early, history, summary)


def _save_checkpoint(
    path: Path,
    model: Any,
    opt: Any,
    sched: Any,
    gen: torch.Generator,
    cfg: TrainConfig,
    loaded: LoadedModel,
    epoch: int,
    best: float,
    best_epoch: int,
    bad: int,
    history: list[dict],
    best_state: dict,
) -> None:
    state = {
        "epoch": epoch,
        "decoder": decoder_state(model),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": _rng_state(gen),
        "best": best,
        "best_epoch": best_epoch,
        "bad_epochs": bad,
        "history": history,
        "best_state": best_state,
        "config": cfg.model_dump(),
        "fingerprint": loaded.fingerprint,
    }
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def write_artifact(
    loaded: LoadedModel, out: Path, summary: dict[str, Any], metrics: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The decoder-only artifact: weights, config, metrics.json, any other file already in ``out``
    (e.g. the drift reference profile) and a manifest with sha256 of each and per-prompt thresholds."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {"training": summary}
    if metrics is not None:
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str))
        thresholds = {}
        for name, d in metrics["datasets"].items():
            for prompt in summary["datasets"][name]["synonyms"] + [summary["datasets"][name]["prompt"]]:
                thresholds[prompt] = d["best_threshold"]
        extra["metrics"] = {
            "miou": metrics["overall"]["miou"],
            "mean_dice": metrics["overall"]["mean_dice"],
            "per_prompt": {
                d["prompt"]: {"miou": d["miou"], "mean_dice": d["mean_dice"]} for d in metrics["datasets"].values()
            },
            "thresholds": thresholds,
        }
    extra["files"] = sorted(
        p.name for p in out.iterdir() if p.is_file() and p.name not in (MANIFEST_FILE, DECODER_FILE, "config.json")
    )
    return save_decoder(loaded, out, extra)
