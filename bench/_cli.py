"""The benches' shared command line, stdlib only, so that `--help` and a bad option answer before
a bench imports torch."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

SMOKE_HELP = "tiny inputs and a tiny random model: checks that the bench runs on today's code (CI); measures nothing"


def sample_data() -> Path:
    """The real Roboflow exports: ``DRYWALL_SAMPLE_DATA``, default ``../shared/data`` beside the checkout."""
    return Path(os.environ.get("DRYWALL_SAMPLE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def bench_parser(doc: str | None, smoke_help: str = SMOKE_HELP, data: bool = False) -> argparse.ArgumentParser:
    """A bench's parser with its module docstring as help, ``--smoke`` and (``data``) ``--data DIR``."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if data:
        ap.add_argument("--data", type=Path, default=sample_data(), help="folder of the real Roboflow exports")
    ap.add_argument("--smoke", action="store_true", help=smoke_help)
    return ap
