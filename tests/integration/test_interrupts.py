"""Ctrl-C, SIGTERM and kill -9 in the middle of real `drywall` processes.

Interrupted: exit 130 with one line and nothing half-written. Killed outright (no chance to clean
up): no worker process keeps writing, and the next run removes what was left and redoes only
what is missing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fakes.roboflow_api import FakeRoboflow, zip_export

pytestmark = pytest.mark.integration
DRYWALL = Path(sys.executable).parent / "drywall"
API_KEY = "testKey-abc123"


def _start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [str(DRYWALL), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _wait_for(cond, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting for the process to get going"
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _dead(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(") ")[1][0] in "ZX"


@pytest.fixture(scope="module")
def big_export(tmp_path_factory) -> Path:
    """8,000 annotated image entries: enough mask work to interrupt mid-way (masks need no image files)."""
    root = tmp_path_factory.mktemp("big") / "big.v1i.coco"
    (root / "train").mkdir(parents=True)
    ring = [5, 5, 150, 6, 160, 150, 6, 155, 75, 80]  # 320 px images: ~7 s of rendering on 2 cores
    coco = {
        "images": [{"id": i, "file_name": f"img{i:05d}.jpg", "width": 320, "height": 320} for i in range(8_000)],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [5, 5, 155, 150], "area": 2e4, "segmentation": [ring]}
            for i in range(8_000)
        ],
        "categories": [{"id": 1, "name": "crack"}],
    }
    (root / "train" / "_annotations.coco.json").write_text(json.dumps(coco))
    return root


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_validate_exits_130_with_one_line(drywall_export: Path, tmp_path: Path, sig) -> None:
    report = tmp_path / "r.json"
    p = _start("validate", drywall_export, "--report", report)
    _wait_for(lambda: (tmp_path / "r_data_docs").exists())  # inside the command, validating
    time.sleep(0.5)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert not report.exists() and not (tmp_path / "r_data_docs").exists(), "nothing half-written"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_masks_workers_die_with_the_parent_and_rerun_redoes_only_the_rest(big_export: Path, tmp_path: Path, sig):
    out = tmp_path / "masks"
    p = _start("masks", big_export, "--out", out, "--workers", "2")
    _wait_for(lambda: (out / ".masks-manifest.json").exists())  # the first progress save
    workers = _children(p.pid)
    assert len(workers) == 2
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert p.returncode == 130 and err.strip() == "interrupted", err
        assert not list(out.rglob("*.tmp")), "an interrupted run removes its temp files"
    _wait_for(lambda: all(_dead(w) for w in workers), timeout=10)
    written = len(list(out.rglob("*.png")))
    time.sleep(1.0)
    assert len(list(out.rglob("*.png"))) == written, "nothing keeps writing after the parent is gone"
    again = subprocess.run([str(DRYWALL), "masks", big_export, "--out", out], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    counts = re.search(r"masks: (\d+) rendered, (\d+) unchanged", again.stdout)
    rendered, unchanged = int(counts[1]), int(counts[2])
    assert unchanged > 0 and rendered + unchanged == 8_000, again.stdout
    assert not list(out.rglob("*.tmp")), "the next run removed what the killed one left"
    assert len(list(out.rglob("*.png"))) == 8_000


@pytest.fixture
def slow_roboflow(sample_data: Path):
    with FakeRoboflow("site-qa", "cracks-3ii36-johwn", 1, zip_export(sample_data / "cracks.v1i.coco"), API_KEY) as f:
        f.stall_s = 30.0
        yield f


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_pull_interrupted_mid_download_leaves_nothing(slow_roboflow: FakeRoboflow, tmp_path: Path, sig) -> None:
    env = {"DRYWALL_ROBOFLOW_API_URL": slow_roboflow.url, "DRYWALL_ROBOFLOW_API_KEY": API_KEY}
    out = tmp_path / "cracks"
    args = ("pull", "--workspace", "site-qa", "--project", "cracks-3ii36-johwn", "--version", "1", "--out", out)
    p = _start(*args, env=env)
    _wait_for(lambda: slow_roboflow.downloads > 0)
    time.sleep(0.5)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    staged = list(tmp_path.glob(".cracks.*"))
    assert not out.exists()
    if sig == signal.SIGINT:
        assert p.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err
        assert staged == [], "the temporary download folder is removed"
    else:
        assert staged, "a kill -9 leaves its staging folder (nothing can run then)"
    slow_roboflow.stall_s = 0
    again = subprocess.run([str(DRYWALL), *map(str, args)], env={**os.environ, **env}, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert list(tmp_path.glob(".cracks.*")) == [], "the next pull removed the leftovers"
    assert (out / "valid" / "_annotations.coco.json").is_file()
