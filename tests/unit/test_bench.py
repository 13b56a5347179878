"""Every benchmark runs against today's code: both ways a reader may type it (`python -m bench.NAME`,
`python bench/NAME.py`), and its whole ``main`` in ``--smoke`` mode (tiny inputs, tiny model), so a
bench broken by a change fails here, not the next time someone measures."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCHES = sorted(p.stem for p in (REPO / "bench").glob("*.py") if not p.stem.startswith("_"))


@pytest.mark.parametrize("name", BENCHES)
def test_bench_runs_as_module_and_as_file(name: str) -> None:
    for cmd in ([sys.executable, "-m", f"bench.{name}", "--help"], [sys.executable, f"bench/{name}.py", "--help"]):
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "usage:" in r.stdout and "--smoke" in r.stdout, (cmd, r.stderr[-500:])


@pytest.mark.slow  # ~75 s for all: `make test` runs them, `make unit` leaves them out
@pytest.mark.parametrize("name", BENCHES)
def test_bench_main_runs_on_tiny_inputs(name: str, sample_data) -> None:
    """The whole measurement on tiny inputs: it prints its table, with the ratio against the naive way."""
    r = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--smoke"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ratio" in r.stdout or "exponent" in r.stdout, r.stdout[-2000:]
