"""`drywall pull` through the real roboflow SDK against a loopback stand-in of the Roboflow API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drywall_core.data.exports import LINEAGE_FILE, open_export, sha256_file
from tests.fakes.roboflow_api import FakeRoboflow, zip_export

pytestmark = pytest.mark.integration
API_KEY = "testKey-abc123"  # the SDK requires a lowercase letter in real keys
DRYWALL = Path(sys.executable).parent / "drywall"


@pytest.fixture(scope="module")
def crack_zip(sample_data: Path) -> bytes:
    return zip_export(sample_data / "cracks.v1i.coco")


@pytest.fixture
def fake(crack_zip: bytes):
    with FakeRoboflow("site-qa", "cracks-3ii36-johwn", 1, crack_zip, API_KEY) as server:
        yield server


def _pull(fake: FakeRoboflow, out: Path, *extra: str, key: str = API_KEY) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DRYWALL_ROBOFLOW_API_URL": fake.url,
        "DRYWALL_ROBOFLOW_API_KEY": key,
        "DRYWALL_PULL_RETRIES": "2",
        "DRYWALL_PULL_BACKOFF_S": "0.05",
    }
    cmd = [
        str(DRYWALL),
        "pull",
        "--workspace",
        fake.workspace,
        "--project",
        fake.project,
        "--version",
        str(fake.version),
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def _leftovers(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(".")]


def test_pull_downloads_verifies_and_records_lineage(fake: FakeRoboflow, cracks_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "cracks-v1"
    r = _pull(fake, out)
    assert r.returncode == 0, r.stderr
    assert "pulled site-qa/cracks-3ii36-johwn/1" in r.stdout
    export = open_export(out)
    assert set(export.splits) == {"test", "valid"}
    assert len(export.splits["valid"].images) == 120
    lineage = json.loads((out / LINEAGE_FILE).read_text())
    assert lineage["source"] == "roboflow"
    assert (lineage["workspace"], lineage["project"], lineage["version"]) == (
        "site-qa",
        "cracks-3ii36-johwn",
        1,
    )
    assert lineage["annotation_sha256"]["valid"] == sha256_file(cracks_export / "valid" / "_annotations.coco.json")
    assert not (out / "roboflow.zip").exists()
    assert not _leftovers(out.parent)
    assert "GET /site-qa/cracks-3ii36-johwn/1/coco" in fake.requests
    assert API_KEY not in r.stdout + r.stderr, "the API key is never printed"


def test_pull_retries_a_download_that_breaks_off(fake: FakeRoboflow, tmp_path: Path) -> None:
    fake.truncate_next = 1
    out = tmp_path / "cracks"
    r = _pull(fake, out)
    assert r.returncode == 0, r.stderr
    assert fake.downloads == 2
    assert "retrying" in r.stderr
    assert len(open_export(out).splits["valid"].images) == 120
    assert API_KEY not in r.stdout + r.stderr


def test_pull_that_keeps_breaking_fails_and_leaves_nothing(fake: FakeRoboflow, tmp_path: Path) -> None:
    fake.truncate_next = 99
    out = tmp_path / "cracks"
    r = _pull(fake, out)
    assert r.returncode == 1
    assert fake.downloads == 3  # first try + 2 retries
    assert "download failed after 3 attempt(s)" in r.stderr
    assert not out.exists()
    assert not _leftovers(tmp_path)
    assert API_KEY not in r.stdout + r.stderr


def test_failed_pull_keeps_existing_export(fake: FakeRoboflow, tmp_path: Path) -> None:
    out = tmp_path / "cracks"
    assert _pull(fake, out).returncode == 0
    before = sorted(p.name for p in out.rglob("*"))
    fake.truncate_next = 99
    r = _pull(fake, out, "--overwrite")
    assert r.returncode == 1
    assert sorted(p.name for p in out.rglob("*")) == before
    assert not _leftovers(tmp_path)


def test_existing_folder_needs_overwrite(fake: FakeRoboflow, tmp_path: Path) -> None:
    out = tmp_path / "cracks"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = _pull(fake, out)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_bad_key_is_refused_without_echoing_it(fake: FakeRoboflow, tmp_path: Path) -> None:
    bad = "wrongKey-zzz999"
    r = _pull(fake, tmp_path / "x", key=bad)
    assert r.returncode == 1
    assert "download failed after 1 attempt(s)" in r.stderr, "a 401 is not retried"
    assert bad not in r.stdout + r.stderr
    assert not (tmp_path / "x").exists()


def test_missing_key_is_usage_error(fake: FakeRoboflow, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ROBOFLOW_API_KEY", "DRYWALL_ROBOFLOW_API_KEY")}
    r = subprocess.run(
        [
            str(DRYWALL),
            "pull",
            "--workspace",
            "w",
            "--project",
            "p",
            "--version",
            "1",
            "--out",
            str(tmp_path / "o"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "no Roboflow API key" in r.stderr


def test_key_is_masked_even_when_the_api_echoes_it(fake: FakeRoboflow, tmp_path: Path) -> None:
    env = {**os.environ, "DRYWALL_ROBOFLOW_API_KEY": API_KEY, "DRYWALL_ROBOFLOW_API_URL": fake.url}
    cmd = [str(DRYWALL), "pull", "--workspace", fake.workspace, "--project", "no-such-project", "--version", "1"]
    r = subprocess.run([*cmd, "--out", str(tmp_path / "x")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "not found" in r.stderr and "api_key=***" in r.stderr, r.stderr
    assert API_KEY not in r.stdout + r.stderr


def test_redact_covers_encoded_forms() -> None:
    from urllib.parse import quote, quote_plus

    from drywall_core.data.sources.roboflow_pull import redact

    key = "k3y/with+odd=chars&more"
    text = f"GET /ws?api_key={quote(key, safe='')} body={quote_plus(key)} raw={key} path=/{quote(key)}/x"
    masked = redact(text, key)
    for form in (key, quote(key, safe=""), quote_plus(key), quote(key)):
        assert form not in masked
    assert masked.count("***") == 4


def test_one_process_pulls_from_a_second_api_after_the_first(crack_zip: bytes, tmp_path: Path) -> None:
    """The SDK binds ``API_URL`` at import; a long-lived worker must still reach the API it is given
    now (was: 'override ignored', and the second pull went to the first, dead, API)."""
    from drywall_core.data.sources import pull_roboflow

    for n in (1, 2):
        with FakeRoboflow("site-qa", "cracks-3ii36-johwn", 1, crack_zip, API_KEY) as server:
            out = tmp_path / f"pull-{n}"
            pull_roboflow(server.workspace, server.project, 1, out, API_KEY, retries=0, api_url=server.url)
            assert "GET /site-qa/cracks-3ii36-johwn/1/coco" in server.requests, f"pull {n} reached its API"
            assert len(open_export(out).splits["valid"].images) == 120
