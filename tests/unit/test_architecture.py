"""The layout rule: domain logic in drywall_core imports no Prefect (tasks/ and flows/ do that).

The CLI is the one place that wires orchestration in (``drywall demo``, ``drywall webhook serve``),
and only inside those commands, so importing any drywall_core module never loads Prefect.
"""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import REPO

ORCHESTRATION = ("prefect", "tasks", "flows", "deployments")


def test_no_prefect_import_in_drywall_core() -> None:
    offenders = []
    for path in (REPO / "drywall_core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = set(tree.body)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                root = n.split(".")[0]
                entry_point_wiring = path.name == "cli.py" and node not in top_level and root != "prefect"
                if root in ORCHESTRATION and not entry_point_wiring:
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
