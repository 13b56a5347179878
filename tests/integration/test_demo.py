"""`drywall demo` as a new user runs it: a fresh home and a fresh Prefect home (ephemeral API)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from drywall_core.base.storage import LocalStore
from drywall_core.release.registry import ModelRegistry

pytestmark = pytest.mark.integration
DRYWALL = Path(sys.executable).parent / "drywall"


def test_demo_runs_the_retrain_flow_and_promotes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "DRYWALL_"))}
    env.update(
        DRYWALL_HOME=str(tmp_path / "home"),
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        COLUMNS="60",  # a narrow log: paths must still come out whole
    )
    first = subprocess.run([str(DRYWALL), "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "PROMOTED" in first.stdout
    reg = ModelRegistry(LocalStore(tmp_path / "home" / "registry"), "clipseg-drywall")
    champion = reg.champion_version()
    assert champion and reg.versions() == [champion]
    assert champion in first.stdout, "the summary names the champion"
    audit = next(ln for ln in first.stdout.splitlines() if ln.startswith("audit log: "))
    assert audit == f"audit log: {reg.store.url}/{reg.audit_key}", "whole paths when stdout is not a terminal"
    assert [e["action"] for e in reg.audit_log()] == ["promote"]
    assert (tmp_path / "home" / "models" / "tiny-clipseg" / "config.json").is_file()
