"""Field-image drift: per-image features, then an Evidently data-drift report against a reference.

Features are cheap and interpretable (what changed: lighting, blur, framing, camera): brightness
mean and spread, RMS contrast, saturation, channel means, sharpness (variance of the Laplacian),
edge density, width, height, aspect ratio, file size; and, when a model is given, per-prompt model
signals (predicted foreground fraction, mean confidence). Texture features are computed on a copy
resized to a fixed size, so they compare across cameras. Files that cannot be read are skipped and
listed with the reason; the run completes.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from drywall_core.base.errors import InputError
from drywall_core.base.fsutil import atomic_open, atomic_write_text
from drywall_core.base.procs import imap_processes
from drywall_core.data.images import decode_rgb, displayed_size, open_rgb
from drywall_core.field.embedding_drift import (
    EMBEDDING_PREFIX,
    EMBEDDINGS_NAME,
    MIN_PHOTOS,
    Decider,
    EmbeddingTest,
    FeatureRule,
    column_threshold,
    decide,
    drift_method,
    embedding_columns,
    embedding_test,
    features_drifted,
    with_embeddings,
)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
FEATURE_SIZE = 256  # texture features on a FEATURE_SIZE x FEATURE_SIZE copy
IMAGE_FEATURES = [
    "brightness_mean",
    "brightness_std",
    "contrast_rms",
    "saturation_mean",
    "red_mean",
    "green_mean",
    "blue_mean",
    "sharpness_laplacian_var",
    "edge_density",
    "width",
    "height",
    "aspect_ratio",
    "file_size_kb",
]


def _reader_opens(path: Path) -> bool:
    """Whether the image reader recognises the file's content (its header only; nothing is decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive): by extension, and any other file whose content the
    reader recognises (a photo saved without or with an odd extension is read, not silently dropped).
    Files that are no image at all (annotations, notes) are not field photos and are left out."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: image folder not found")
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sorted(
        p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS or (not p.name.startswith(".") and _reader_opens(p))
    )


def image_features(path: Path, max_pixels: int = 64_000_000) -> dict[str, float]:
    """Features of one image; raises ValueError with a reason for unreadable files."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(path) as im:  # one open: the displayed size, then a reduced-scale decode
            w, h = displayed_size(im)
            rgb = decode_rgb(im, max_pixels, draft=(FEATURE_SIZE * 2, FEATURE_SIZE * 2))
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a reason to skip
        raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    small = np.asarray(rgb.resize((FEATURE_SIZE, FEATURE_SIZE), Image.BILINEAR), dtype=np.float32) / 255.0
    gray = small @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    mx, mn = small.max(axis=2), small.min(axis=2)
    saturation = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    grad = np.hypot(ndimage.sobel(gray, axis=0), ndimage.sobel(gray, axis=1))
    return {
        "brightness_mean": float(gray.mean()),
        "brightness_std": float(gray.std()),
        "contrast_rms": float(gray.std() / max(gray.mean(), 1e-6)),
        "saturation_mean": float(saturation.mean()),
        "red_mean": float(small[..., 0].mean()),
        "green_mean": float(small[..., 1].mean()),
        "blue_mean": float(small[..., 2].mean()),
        "sharpness_laplacian_var": float(ndimage.laplace(gray).var()),
        "edge_density": float((grad > 0.5).mean()),
        "width": float(w),
        "height": float(h),
        "aspect_ratio": float(w / h),
        "file_size_kb": size / 1024.0,
    }


def features_chunk(paths: list[str], max_pixels: int) -> list[tuple[str, dict | None, str | None]]:
    """Features of a batch of images: (path, features or None, reason skipped or None)."""
    return _features_chunk(paths, max_pixels)


def table_from_results(results: list[tuple[str, dict | None, str | None]]) -> FeatureTable:
    rows = [{"path": p, **f} for p, f, _ in results if f is not None]
    skipped = [{"path": p, "reason": why} for p, f, why in results if f is None]
    return FeatureTable(pd.DataFrame(rows, columns=["path", *IMAGE_FEATURES]), skipped)


def _features_chunk(paths: list[str], max_pixels: int) -> list[tuple[str, dict | None, str | None]]:
    out = []
    for p in paths:
        try:
            out.append((p, image_features(Path(p), max_pixels), None))
        except (ValueError, OSError) as exc:
            out.append((p, None, str(exc)))
    return out


@dataclass
class FeatureTable:
    frame: pd.DataFrame  # one row per readable image: "path" + IMAGE_FEATURES (+ model signals)
    skipped: list[dict[str, str]] = field(default_factory=list)


def extract_features(
    paths: Sequence[Path], workers: int = 0, max_pixels: int = 64_000_000, progress: bool = True, chunk: int = 32
) -> FeatureTable:
    """Features of every image, in parallel processes; unreadable files go to ``skipped``."""
    names = [str(p) for p in paths]
    chunks = [names[i : i + chunk] for i in range(0, len(names), chunk)]
    workers = workers or os.cpu_count() or 1
    results: list[tuple[str, dict | None, str | None]] = []
    bar = tqdm(total=len(names), desc="drift features", unit="img", disable=None if progress and names else True)
    if workers == 1 or len(chunks) <= 1:
        for c in chunks:
            results += _features_chunk(c, max_pixels)
            bar.update(len(c))
    else:
        for part in imap_processes(partial(_features_chunk, max_pixels=max_pixels), chunks, workers, ordered=True):
            results += part
            bar.update(len(part))
    bar.close()
    return table_from_results(results)


def add_model_signals(table: FeatureTable, loaded: Any, prompts: Sequence[str], batch_size: int = 8) -> None:
    """Per-prompt predicted foreground fraction and mean confidence of the model (in place); each
    image is encoded once for all prompts."""
    from drywall_core.model.runtime import probabilities

    paths = list(table.frame["path"])
    frac: dict[str, list[float]] = {p: [] for p in prompts}
    conf: dict[str, list[float]] = {p: [] for p in prompts}
    for i in range(0, len(paths), batch_size):
        images = [open_rgb(p) for p in paths[i : i + batch_size]]
        for maps in probabilities(loaded, images, prompts, batch_size):
            for prompt in prompts:
                prob = maps[prompt]
                fg = prob >= 0.5
                frac[prompt].append(float(fg.mean()))
                conf[prompt].append(float(np.where(fg, prob, 1 - prob).mean()))
    for prompt in prompts:
        slug = "_".join(prompt.split())
        table.frame[f"fg_fraction__{slug}"] = frac[prompt]
        table.frame[f"confidence__{slug}"] = conf[prompt]


def add_embeddings(table: FeatureTable, loaded: Any, store: Any = None, batch_size: int = 8) -> None:
    """Each photo's CLIP image embedding as ``emb_<i>`` columns (in place); with ``store`` (an
    :class:`~drywall_core.model.embeddings.EmbeddingStore`) a photo embedded before is read, not
    encoded again."""
    from drywall_core.base.fsutil import sha256_file
    from drywall_core.model.runtime import image_embeddings

    paths = [Path(p) for p in table.frame["path"]]
    if store is not None:
        vectors = store.embed(paths, [sha256_file(p) for p in paths], batch_size)
    else:
        parts = [
            image_embeddings(loaded, [open_rgb(p) for p in paths[i : i + batch_size]])
            for i in range(0, len(paths), batch_size)
        ]
        vectors = np.concatenate(parts) if parts else np.zeros((0, loaded.model.config.vision_config.hidden_size))
    table.frame = with_embeddings(table.frame, vectors)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The columns tested one by one: image statistics and model signals (not the embeddings)."""
    return [c for c in frame.columns if c != "path" and not str(c).startswith(EMBEDDING_PREFIX)]


def save_profile(frame: pd.DataFrame, path: Path) -> None:
    """The reference profile (features of the training images) as parquet, atomically."""
    with atomic_open(Path(path), "wb") as f:
        frame.to_parquet(f, index=False)


PROFILE_FILE = "reference_profile.parquet"


def write_reference_profile(
    images: Sequence[Path],
    path: Path,
    workers: int = 0,
    progress: bool = False,
    model: Any = None,
    prompts: Sequence[str] = (),
    embedding_precision: str | None = None,
) -> int:
    """Features of the training images, stored with the model version as the drift reference; with
    ``model``, its signals per prompt too, so that drift compares them against field photos; with
    ``embedding_precision`` too, their image embeddings as prediction computes them (``int8`` on a
    CPU: a quantized copy of the model, since the embeddings of two precisions differ by about half
    the spread between two samples of photos)."""
    table = extract_features(images, workers=workers, progress=progress)
    if model is not None and prompts:
        add_model_signals(table, model, prompts)
    if model is not None and embedding_precision:
        import copy

        from drywall_core.model.runtime import for_inference

        add_embeddings(table, for_inference(copy.deepcopy(model), embedding_precision))
    save_profile(table.frame, path)
    return len(table.frame)


def load_profile(path: Path) -> pd.DataFrame:
    """A reference profile written by :func:`save_profile`; anything else is named and refused."""
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any parquet reader failure means "not a profile"
        raise InputError(f"{path}: unreadable reference profile ({type(exc).__name__}: {exc})") from None
    missing = [c for c in IMAGE_FEATURES if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: reference profile lacks feature columns: {', '.join(missing)}")
    bad = [c for c in IMAGE_FEATURES if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise InputError(f"{path}: reference profile has non-numeric feature columns: {', '.join(bad)}")
    return frame


# features an inspector reads at a glance (exposure, contrast, colour, focus, texture): their mean
# per run is in every drift snapshot, so the monitoring dashboard plots them over time
TSNE_MIN_PHOTOS = 31
MAIN_FEATURES = ("brightness_mean", "contrast_rms", "saturation_mean", "sharpness_laplacian_var", "edge_density")


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    drift_share: float = 0.5,
    decider: Decider = "features",
    embedding_test_name: EmbeddingTest = "mmd",
    metadata: dict[str, str] | None = None,
    feature_rule: FeatureRule = "share",
    tags: Sequence[str] = ("drift",),
    plot_embeddings: bool = True,
) -> tuple[Any, dict]:
    """Evidently ``DataDriftPreset`` over the shared feature columns, the mean of the main features
    of the current images, and, where both sides carry image embeddings, Evidently's embeddings
    drift; ``decider`` says which test gives ``drift_detected``. Returns (snapshot, summary).
    ``plot_embeddings``: False leaves Evidently's embeddings widget (a t-SNE) out; the test still runs."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift, MeanValue
    from evidently.presets import DataDriftPreset

    cols = [c for c in feature_columns(reference) if c in current.columns]
    if len(reference) < 2 or len(current) < 2:
        raise InputError(
            f"need at least 2 readable images on each side (reference {len(reference)}, current {len(current)})"
        )
    emb = [c for c in embedding_columns(reference) if c in current.columns]
    compared = bool(emb) and min(len(reference), len(current)) >= MIN_PHOTOS
    emb_result = (
        embedding_test(reference[emb].to_numpy(), current[emb].to_numpy(), embedding_test_name) if compared else None
    )
    # Evidently's embeddings widget draws a t-SNE (perplexity 30) of both sides: it needs more photos
    plotted = plot_embeddings and compared and len(reference) + len(current) > TSNE_MIN_PHOTOS
    definition = DataDefinition(numerical_columns=cols, embeddings={EMBEDDINGS_NAME: emb} if plotted else None)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # constant columns (fixed image size) in correlations
        means = [MeanValue(column=c) for c in MAIN_FEATURES if c in cols]
        method = drift_method(embedding_test_name, len(reference))
        extra = [EmbeddingsDrift(embeddings_name=EMBEDDINGS_NAME, drift_method=method)]
        keep = cols + (emb if plotted else [])
        snapshot = Report(
            [
                DataDriftPreset(drift_share=drift_share, threshold=column_threshold(feature_rule, len(cols))),
                *means,
                *(extra if plotted else []),
            ],
            include_tests=True,
            tags=list(tags),
            metadata=metadata or {},  # model version and run, as field-prediction snapshots carry
        ).run(
            current_data=Dataset.from_pandas(current[keep].reset_index(drop=True), data_definition=definition),
            reference_data=Dataset.from_pandas(reference[keep].reset_index(drop=True), data_definition=definition),
        )
    body = snapshot.dict()
    count = next(m for m in body["metrics"] if str(m.get("metric_name", "")).startswith("DriftedColumnsCount"))
    columns = {}
    for m in body["metrics"]:
        cfg = m.get("config") or {}
        if str(cfg.get("type", "")).endswith(":ValueDrift"):
            columns[cfg["column"]] = {"score": float(m["value"]), "method": str(cfg.get("method", ""))}
    tests = {t.get("name"): str(t.get("status")).rsplit(".", 1)[-1] for t in body.get("tests", [])}
    drifted = sorted(n for n in columns if tests.get(f"Value Drift for column {n}") == "FAIL")
    share = float(count["value"]["share"])
    by_features = features_drifted(feature_rule, share, int(count["value"]["count"]), drift_share)
    verdict, decided_by = decide(decider, by_features, emb_result)
    summary = {
        "drift_detected": verdict,
        "decided_by": decided_by,
        "features_drift_detected": by_features,
        "feature_rule": feature_rule,
        "embeddings": asdict(emb_result) if emb_result else None,
        "drifted_share": share,
        "drift_share_threshold": drift_share,
        "drifted_columns": drifted,
        "columns": columns,
    }
    return snapshot, summary


@dataclass
class DriftResult:
    summary: dict[str, Any]
    json_path: Path
    html_path: Path
    snapshot: Any = None  # the Evidently snapshot, for the monitoring workspace


@dataclass(frozen=True)
class Slicing:
    """How a drift run breaks the current photos down: each one's slice keys, and the smallest
    slice that is tested."""

    keys: pd.DataFrame  # path, site, camera, week (drywall_core.data.slice_keys.slice_frame)
    min_photos: int = 20


def run_drift(
    reference: pd.DataFrame,
    current: FeatureTable,
    out: Path,
    drift_share: float = 0.5,
    n_reference: int | None = None,
    reference_skipped: list[dict] | None = None,
    notes: dict[str, Any] | None = None,
    decider: Decider = "features",
    embedding_test_name: EmbeddingTest = "mmd",
    metadata: dict[str, str] | None = None,
    feature_rule: FeatureRule = "share",
    slicing: Slicing | None = None,
) -> DriftResult:
    """Write ``drift.json`` (with ``notes``, e.g. whether model signals were compared, and with
    ``slicing`` the drift of each site, camera and week) and ``drift.html``."""
    from drywall_core.field.slices import slice_drift

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    snapshot, summary = drift_report(
        reference, current.frame, drift_share, decider, embedding_test_name, metadata, feature_rule
    )
    slices = []
    if slicing is not None:

        def report(ref: pd.DataFrame, part: pd.DataFrame) -> dict[str, Any]:
            return drift_report(ref, part, drift_share, decider, embedding_test_name, None, feature_rule, (), False)[1]

        slices = slice_drift(reference, current.frame, slicing.keys, slicing.min_photos, report)
    summary = {
        **summary,
        "slices": [asdict(s) for s in slices],
        "n_reference": int(n_reference if n_reference is not None else len(reference)),
        "n_current": len(current.frame),
        "skipped": current.skipped,
        "reference_skipped": reference_skipped or [],
        **(notes or {}),
    }
    html = out / "drift.html"
    tmp = out / ".drift.html.tmp"
    try:
        snapshot.save_html(str(tmp))
        os.replace(tmp, html)
    except BaseException:  # a full disk or an interrupt: no half-written report left behind
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_text(out / "drift.json", json.dumps(summary, indent=2))
    return DriftResult(summary, out / "drift.json", html, snapshot)
