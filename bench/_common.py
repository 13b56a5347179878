"""Shared bench helpers: sample data and a rich table with a ratio column."""

from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench._cli import sample_data
from drywall_core.data.datasets import load_registry
from drywall_core.data.samples import Sample, export_samples
from drywall_core.data.sources import generate_synthetic


def data_root() -> Path:
    return sample_data()


def crack_samples(n: int) -> tuple[list[Sample], str]:
    """``n`` (image, mask) samples from the real crack export, else from the synthetic sample."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    export = data_root() / "cracks.v1i.coco"
    where = f"real crack export ({export})"
    if not export.is_dir():
        export = generate_synthetic(tmp / "synthetic", n_sources=max(8, n // 2))["cracks"]
        where = "synthetic crack sample (real data not found)"
    samples = export_samples(export, load_registry().get("cracks"), tmp / "masks", seed=0, val_fraction=0.2)
    return sorted(samples, key=lambda s: s.image.name)[:n], where


def bench_model(smoke: bool = False, seed: int = 0):
    """The real CLIPSeg architecture with random weights, or (``--smoke``) the tiny model the tests use."""
    from drywall_core.model.load import RANDOM_REAL, load_base, load_model

    if not smoke:
        return load_base(RANDOM_REAL, seed=seed)
    from drywall_core.model.tiny import init_tiny

    return load_model(init_tiny(Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny", seed=seed))


def smoke_exports() -> Path:
    """A folder of two small synthetic exports (``--smoke``)."""
    root = Path(tempfile.mkdtemp(prefix="bench-smoke-")) / "data"
    generate_synthetic(root, n_sources=4)
    return root


def table(title: str, columns: list[str], rows: list[list[str]], width: int = 120) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*r)
    Console(width=width).print(t)
