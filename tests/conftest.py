"""Shared fixtures: the real sample data, a synthetic export, and an in-process CLI runner."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
