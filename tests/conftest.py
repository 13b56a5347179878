"""Shared fixtures: the real sample data, a synthetic export, and an in-process CLI runner."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# `make test` runs the suite on pytest-xdist workers, test by test (--dist load): each worker takes
# the next test as it frees up, so the longest start first (measured with --durations; the
# wait-bound production path then overlaps the CPU-bound rest) and the run lasts about as long as
# its longest test. Measured on 2 cores: 10.5-11 min this way in a warm checkout (14.8 on a clean
# clone); 14.8 min warm with a module per unit (--dist loadfile), which balances worse. (--dist loadgroup
# is no way out: with pytest 9 its groups are silently ignored.)
LONGEST_FIRST = (
    "tests/integration/test_production_path.py",
    "tests/integration/test_stack.py",
    "tests/integration/test_label_queue.py::test_label_queue_uploads_uncertain_images",
    "tests/unit/test_train.py::test_int8_cache_trains_as_well_as_fp16",
    "tests/integration/test_label_queue.py::test_batches_hold_no_near_duplicates",
    "tests/integration/test_flows.py::test_retrain_promotes_then_refuses",
    "tests/unit/test_bench.py::test_bench_main_runs_on_tiny_inputs[serve]",
    "tests/integration/test_demo.py",
    "tests/integration/test_webhook.py::test_alerts_one_notification_per_failed_run",
    "tests/integration/test_webhook.py",
    "tests/integration/test_monitoring.py::test_runs_over_time",
    "tests/unit/test_predict_evaluate.py",
    "tests/unit/test_bench.py::test_bench_main_runs_on_tiny_inputs[drift_power]",
    "tests/integration/test_equivalence.py::test_training_gives_the_same_candidate",
    "tests/integration/test_flows.py::test_retrain_and_drift_on_the_s3_store",
    "tests/unit/test_bench.py::test_bench_main_runs_on_tiny_inputs[scale]",
    "tests/integration/test_infra.py::test_kubernetes_gpu_pool",
    "tests/integration/test_equivalence.py",
    "tests/integration/test_serve.py::test_predict_with_server",
    "tests/integration/test_flows.py::test_a_rerun_of_a_crashed_retrain",
    "tests/unit/test_drift.py",
    "tests/unit/test_bench.py::test_bench_main_runs_on_tiny_inputs",
    "tests/integration/test_flows.py::test_drift_flow_reports_and_emits_on_drift",
    "tests/integration/test_dask.py",
    "tests/integration/test_serve_follow.py",
    "tests/integration/test_interrupts.py",
    "tests/unit/test_slices.py",
)


def pytest_configure(config: pytest.Config) -> None:
    """Started in the background by a non-interactive shell (`make test &`, nohup, some CI runners),
    this process inherits SIGINT ignored, and so would every server, worker and command a test
    starts: Ctrl-C tests then see Ctrl-C do nothing, and a Prefect worker, which turns SIGTERM into
    SIGINT, never stops. The tests stand for processes started as a shell or a service manager
    starts them, so Ctrl-C is made deliverable again here (in each xdist worker too)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return next((i for i, p in enumerate(LONGEST_FIRST) if item.nodeid.startswith(p)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order


def _sample_root() -> Path:
    return Path(os.environ.get("DRYWALL_SAMPLE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The real Roboflow exports (``DRYWALL_SAMPLE_DATA``): skip when absent, fail in CI."""
    root = _sample_root()
    if not (root / "cracks.v1i.coco").is_dir():
        msg = f"real sample data not found at {root} (set DRYWALL_SAMPLE_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def cracks_export(sample_data: Path) -> Path:
    return sample_data / "cracks.v1i.coco"


@pytest.fixture(scope="session")
def drywall_export(sample_data: Path) -> Path:
    return sample_data / "Drywall-Join-Detect.v2i.coco"


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from drywall_core.data.sources import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic") / "sample"
    generate_synthetic(root, seed=0, n_sources=12)
    return root


@pytest.fixture
def synthetic_cracks(synthetic_root: Path, tmp_path: Path) -> Path:
    """A private, mutable copy of the synthetic crack export."""
    dst = tmp_path / "synthetic-cracks.v1i.coco"
    shutil.copytree(synthetic_root / "synthetic-cracks.v1i.coco", dst)
    return dst


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Each test gets its own DRYWALL_HOME and fresh settings."""
    from drywall_core.base.config import get_settings

    monkeypatch.setenv("DRYWALL_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run ``drywall ARGS`` in-process through the real entry point; returns exit code and output."""
    from deployments.cli import main
    from drywall_core.base.config import get_settings

    def run(*args: str) -> CliResult:
        get_settings.cache_clear()
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["drywall", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def edit_coco(export: Path, split: str, fn: Callable[[dict], None]) -> Path:
    """Apply ``fn`` to a split's annotation JSON in place; returns the file."""
    path = export / split / "_annotations.coco.json"
    coco = json.loads(path.read_text())
    fn(coco)
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIPSeg written by the same code as ``drywall model init-tiny``."""
    from drywall_core.model.tiny import init_tiny

    return init_tiny(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def synthetic_exports(synthetic_root: Path) -> list[Path]:
    return [synthetic_root / "synthetic-cracks.v1i.coco", synthetic_root / "synthetic-drywall-join.v1i.coco"]


@pytest.fixture(scope="session")
def synthetic_samples(synthetic_exports: list[Path], tmp_path_factory: pytest.TempPathFactory):
    from drywall_core.base.config import Settings
    from drywall_core.data.samples import collect_samples

    settings = Settings(home=tmp_path_factory.mktemp("samples-home"))
    return collect_samples(synthetic_exports, settings)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3-compatible server (SeaweedFS ``weed mini``) on free loopback ports, stopped after."""
    from deployments.s3server import S3Server

    server = S3Server(tmp_path_factory.mktemp("seaweed"), "drywall-test", "testAccessKey", "testSecretKey123")
    server.start(timeout=90)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def artifact_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A decoder artifact (as `drywall train` writes it) with a metrics.json."""
    from drywall_core.base.fsutil import atomic_write_text
    from drywall_core.model.load import load_model, save_decoder

    out = tmp_path_factory.mktemp("artifact") / "model"
    out.mkdir()
    atomic_write_text(out / "metrics.json", json.dumps({"overall": {"miou": 0.5}}))
    save_decoder(load_model(tiny_model_dir), out, {"files": ["metrics.json"]})
    return out


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory):
    """A temporary Prefect server for the whole session (private PREFECT_HOME, no analytics)."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = "drywall_core"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
