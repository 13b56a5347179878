"""The layout rule: domain logic in drywall_core imports no Prefect, flows, tasks or deployments,
lazily or not, with no exemption. The commands that wire orchestration in (``drywall demo``,
``webhook serve``, ``stack``) live in ``deployments/cli.py``; so do the local stack and the S3 test
server, which start processes.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

ORCHESTRATION = ("prefect", "tasks", "flows", "deployments")


def test_no_prefect_import_in_drywall_core() -> None:
    offenders = []
    for path in (REPO / "drywall_core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                if n.split(".")[0] in ORCHESTRATION:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {n}")
    assert not offenders, offenders


def test_importing_every_domain_module_does_not_load_prefect() -> None:
    modules = sorted(".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "drywall_core").rglob("*.py"))
    code = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'flows', 'tasks'))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_no_process_launching_in_drywall_core() -> None:
    """Servers and workers are started by deployments/ (stack, S3 test server), never by the domain core."""
    offenders = [
        f"{p.relative_to(REPO)}"
        for p in (REPO / "drywall_core").rglob("*.py")
        if "subprocess"
        in {a.name for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Import) for a in n.names}
    ]
    assert not offenders, offenders


def test_installed_command_is_the_full_cli() -> None:
    """The console script `drywall` (pyproject) carries the domain and the orchestration commands."""
    drywall = Path(sys.executable).parent / "drywall"
    r = subprocess.run([str(drywall), "--help"], capture_output=True, text=True, timeout=60, env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    for command in ("validate", "masks", "train", "registry", "demo", "webhook", "stack"):
        assert command in r.stdout, command
