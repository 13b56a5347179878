"""Every benchmark starts both ways a reader may type it: `python -m bench.NAME` and `python bench/NAME.py`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCHES = sorted(p.stem for p in (REPO / "bench").glob("*.py") if not p.stem.startswith("_"))


@pytest.mark.parametrize("name", BENCHES)
def test_bench_runs_as_module_and_as_file(name: str, tmp_path) -> None:
    for cmd in ([sys.executable, "-m", f"bench.{name}", "--help"], [sys.executable, f"bench/{name}.py", "--help"]):
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "usage:" in r.stdout, (cmd, r.stderr[-500:])
