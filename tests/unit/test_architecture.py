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
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / "drywall_core").rglob("*.py")
        if p.name != "__main__.py"
    )
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


# the core's subpackages, lowest first: a module imports its own layer and the ones below, never above
LAYERS = ("base", "data", "model", "field", "release", "stages", "serve", "cli")


def _core_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported drywall_core module) for every import in a file, lazy ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("drywall_core.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("drywall_core"):
            if node.module == "drywall_core":
                out += [(node.lineno, f"drywall_core.{a.name}") for a in node.names]
            else:
                out.append((node.lineno, node.module))
    return out


def test_the_core_is_grouped_in_layers_whose_imports_go_one_way() -> None:
    core = REPO / "drywall_core"
    loose = sorted(p.name for p in core.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"every module lives in one of {LAYERS}: {loose}"
    assert sorted(p.name for p in core.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(LAYERS)
    offenders = []
    for path in core.rglob("*.py"):
        layer = path.relative_to(core).parts[0]
        if layer not in LAYERS:
            continue
        for line, module in _core_imports(path):
            target = module.split(".")[1]
            if target in LAYERS and LAYERS.index(target) > LAYERS.index(layer):
                offenders.append(f"{path.relative_to(REPO)}:{line}: {layer} imports {module}")
    assert not offenders, offenders


def _calls(path: Path) -> set[str]:
    """Functions a module calls by name (``decode(...)``, ``runtime.decode(...)``; ``b"".decode()`` aside)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name):
            names.add(f.id)
        elif isinstance(f, ast.Attribute) and (f.attr == "quantize_dynamic" or getattr(f.value, "id", "") == "runtime"):
            names.add(f.attr)
    return names


def test_the_forward_pass_is_written_once() -> None:
    """Images through the backbone, prompts through the decoder, maps upsampled: only the runtime does
    that (the activation cache encodes, training decodes cached activations); every other caller --
    prediction, evaluation, field predictions, shadow, label queue, drift signals -- calls it."""
    allowed = {
        "encode_images": {"model/runtime.py", "model/cache.py"},
        "decode": {"model/runtime.py", "model/train.py"},
        "upsample_probs": {"model/runtime.py"},
        "pixel_values": {"model/runtime.py", "model/cache.py"},
        "quantize_dynamic": {"model/runtime.py"},
    }
    core = REPO / "drywall_core"
    offenders = []
    for path in core.rglob("*.py"):
        rel = path.relative_to(core).as_posix()
        for name in _calls(path) & set(allowed):
            if rel not in allowed[name]:
                offenders.append(f"{rel} calls {name}()")
    assert not offenders, offenders
    users = {
        "model/predict.py", "model/evaluate.py", "field/predictions.py", "release/shadow.py",
        "field/label_queue.py", "field/drift.py", "release/warmup.py", "serve/batching.py",
    }  # fmt: skip
    for rel in users:
        assert _calls(core / rel) & {
            "probabilities",
            "probabilities_for",
            "probabilities_each",
            "probabilities_and_embeddings",
        }, f"{rel} does not use the runtime"
    cache = (core / "model" / "cache.py").read_text()
    assert "def encode_images" not in cache and "def decode" not in cache, "the cache module holds only the cache"


def test_commands_and_tasks_are_thin() -> None:
    """A command or a task reads its inputs, makes a stage call and presents the result: none is long."""
    long = []
    for folder in (REPO / "drywall_core" / "cli", REPO / "tasks"):
        for path in folder.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.FunctionDef):
                    continue
                decorators = [d.func if isinstance(d, ast.Call) else d for d in node.decorator_list]
                if not {"command", "task"} & {getattr(d, "attr", getattr(d, "id", "")) for d in decorators}:
                    continue
                body = node.end_lineno - (node.body[0].end_lineno if ast.get_docstring(node) else node.lineno)
                if body > 30:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {body} lines")
    assert not long, long
