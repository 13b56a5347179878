"""Every `drywall` command with unusable inputs and outputs: a classified one-line error, never "unexpected".

The walk covers each command of the CLI (the test fails if a command is added without a case),
with the faults a person really makes: an output folder that is a file, an input that is missing
or corrupt, a relative report path, a prompt too long for a file name or for the tokenizer, a
drift profile with the wrong columns, a corrupt registry.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deployments.cli import app
from tests.conftest import edit_coco


def _commands(group, prefix: str = "") -> set[str]:
    import typer.main

    cmd = typer.main.get_command(group)
    names: set[str] = set()
    for name, sub in getattr(cmd, "commands", {}).items():
        full = f"{prefix}{name}"
        if hasattr(sub, "commands"):
            names |= {f"{full} {n}" for n in sub.commands}
        else:
            names.add(full)
    return names


@pytest.fixture
def afile(tmp_path: Path) -> Path:
    f = tmp_path / "a-file"
    f.write_text("not a folder")
    return f


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    p = tmp_path / "photos" / "wall.jpg"
    p.parent.mkdir()
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(p)
    return p


def _cases(tmp: Path, afile: Path, photo: Path, tiny: Path, export: Path) -> dict[str, list[tuple]]:
    """command -> list of (args, expected exit code, text the one-line error must contain)."""
    missing = tmp / "nope"
    bad_profile = tmp / "profile.parquet"
    pd.DataFrame({"colour": [1.0, 2.0], "mood": [3.0, 4.0]}).to_parquet(bad_profile)
    long_prompt = "segment " + "very " * 60 + "long crack"
    broken = tmp / "broken-cracks"
    shutil.copytree(export, broken)
    edit_coco(broken, "train", lambda coco: coco["annotations"][0]["bbox"].__setitem__(2, -4))
    queue = ["--workspace", "w", "--project", "cracks-3ii36-johwn"]
    return {
        "pull": [
            (["--workspace", "w", "--project", "p", "--version", "1", "--out", afile], 2, str(afile)),
        ],
        "validate": [
            ([missing], 2, str(missing)),
            ([export, "--report", afile / "r.json"], 2, str(afile)),
        ],
        "masks": [([export, "--out", afile], 2, str(afile)), ([missing, "--out", tmp / "m"], 2, str(missing))],
        "split": [([export, "--out", afile / "s.json"], 2, str(afile))],
        "ingest": [
            ([missing], 2, str(missing)),
            ([export, "--report", afile / "r.json"], 2, str(afile)),
            ([broken, "--dataset", "cracks"], 1, "bbox width not positive"),
        ],
        "sample": [(["--out", afile], 2, str(afile))],
        "datasets": [],
        "model init-tiny": [([afile], 2, str(afile))],
        "model info": [([missing], 2, str(missing))],
        "train": [
            (["--export", export, "--out", afile, "--model", tiny], 2, str(afile)),
            (["--export", missing, "--out", tmp / "run"], 2, str(missing)),
            (["--export", export, "--out", tmp / "run2", "--profile", "nope"], 2, "unknown training profile 'nope'"),
            (["--export", broken, "--out", tmp / "run3", "--model", tiny], 1, "bbox width not positive"),
        ],
        "evaluate": [
            (["--model", tiny, "--export", export, "--out", afile], 2, str(afile)),
            (["--model", missing, "--export", export, "--out", tmp / "ev"], 2, str(missing)),
        ],
        "predict": [
            ([photo, "--prompt", "segment crack", "--model", tiny, "--out", afile], 2, str(afile)),
            ([photo, "--prompt", long_prompt, "--model", tiny, "--out", tmp / "p"], 2, "tokens"),
            ([photo, "--prompt", "segment crack", "--out", tmp / "p2"], 2, "give --model"),
            (
                [photo, "--prompt", "segment crack", "--server", "http://127.0.0.1:9", "--out", tmp / "p3"],
                1,
                "prediction service http://127.0.0.1:9: ConnectError",
            ),
        ],  # fmt: skip
        "drift": [
            (["--reference", bad_profile, "--current", photo.parent, "--out", tmp / "d"], 2, str(bad_profile)),
            (["--reference", photo.parent, "--current", photo.parent, "--out", afile], 2, str(afile)),
            (["--reference", missing, "--current", photo.parent, "--out", tmp / "d2"], 2, str(missing)),
        ],
        "measure": [
            ([missing], 2, str(missing)),
            ([afile], 2, str(afile)),
            ([photo, "--px-per-mm", "-2"], 2, "--px-per-mm"),
        ],
        "label-queue": [
            (["--model", tiny, "--images", missing, *queue, "--dry-run", tmp / "q"], 2, str(missing)),
            (["--model", tiny, "--images", photo.parent, *queue, "--dry-run", afile], 2, str(afile)),
            (["--model", tiny, "--images", photo.parent, "--workspace", "w", "--project", "nowhere"], 2, "--prompt"),
            (["--model", tiny, "--images", photo.parent, *queue], 2, "no Roboflow API key"),
            (["--model", missing, "--images", photo.parent, *queue, "--dry-run", tmp / "q2"], 2, str(missing)),
        ],
        "alerts setup": [(["--url", "ftp://example.com/hook"], 2, "http(s)")],
        "webhook serve": [([], 2, "DRYWALL_WEBHOOK_SECRET")],
        "serve": [([], 2, "no API keys: set DRYWALL_SERVE__API_KEYS_FILE")],  # its HTTP faults: test_serve.py
        "api-key new": [(["--file", afile / "keys.txt"], 2, str(afile)), ([], 2, "no key file")],
        "api-key hash": [],
        "stack up": [],  # starts servers: covered by the stack integration test
        "stack down": [],
        "stack status": [],
        "demo": [],  # covered by test_demo
        "registry list": [],  # corrupt-registry cases: test_registry_cli.py
        "registry show": [(["v-missing"], 2, "v-missing")],
        "registry promote": [(["v-missing"], 2, "v-missing")],
        "registry rollback": [([], 1, "no champion")],
        "registry publish": [([missing], 2, str(missing)), ([afile], 2, str(afile))],
        "registry evaluate": [(["--export", missing], 2, str(missing)), (["--export", export], 1, "no champion")],
        "registry audit": [],
        "registry prune": [],  # its cases: test_registry_cli.py
        "registry pull": [(["v-missing", tmp / "pulled"], 2, "v-missing"), (["champion", afile], 1, "no champion")],
    }


def test_every_fault_is_classified(
    cli, tmp_path: Path, afile: Path, photo: Path, tiny_model_dir: Path, synthetic_cracks: Path, monkeypatch
) -> None:
    monkeypatch.delenv("DRYWALL_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("DRYWALL_ROBOFLOW_API_KEY", raising=False)
    monkeypatch.delenv("ROBOFLOW_API_KEY", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    cases = _cases(tmp_path, afile, photo, tiny_model_dir, synthetic_cracks)
    assert set(cases) == _commands(app), "every command has an entry here"
    for command, runs in cases.items():
        for args, code, named in runs:
            r = cli(*command.split(), *args)
            where = f"drywall {command} {' '.join(map(str, args))[:120]}"
            assert "unexpected" not in r.err, f"{where}: {r.err}"
            assert r.code == code, f"{where}: exit {r.code}, wanted {code}: {r.err}"
            errors = [x for x in r.err.splitlines() if x.startswith("error:")]
            assert len(errors) == 1, f"{where}: one error line expected: {r.err}"
            assert named in errors[0], f"{where}: the error does not name {named}: {errors[0]}"


def test_relative_report_path_works(cli, synthetic_cracks: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = cli("validate", synthetic_cracks, "--report", "reports/cracks.json")
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "reports" / "cracks.json").read_text())["success"] is True
    assert (tmp_path / "reports" / "cracks_data_docs" / "index.html").is_file()


def test_long_prompt_gets_a_writable_distinct_name(tmp_path: Path) -> None:
    from drywall_core.model.predict import output_name

    a = "segment " + "wide " * 80 + "crack"
    b = "segment " + "wide " * 80 + "gap"
    names = {output_name(Path("photos/wall.jpg"), p) for p in (a, b)}
    assert len(names) == 2, "different prompts keep different names"
    for n in names:
        assert len(n.encode()) <= 255 and n.startswith("wall__segment_wide") and n.endswith(".png")
        (tmp_path / n).write_bytes(b"")  # the file system takes it
    assert output_name(Path("x.jpg"), "segment crack") == "x__segment_crack.png", "short names keep the contract"


def test_drift_profile_without_feature_columns_is_named(cli, tmp_path: Path, photo: Path) -> None:
    shutil.copy(photo, photo.parent / "wall2.jpg")
    prof = tmp_path / "p.parquet"
    pd.DataFrame({"path": ["x"], "brightness_mean": [0.5]}).to_parquet(prof)
    r = cli("drift", "--reference", prof, "--current", photo.parent, "--out", tmp_path / "d")
    assert r.code == 2 and f"{prof}: reference profile lacks" in r.err, r.err


def test_unreachable_artifact_store_is_named(cli, monkeypatch) -> None:
    for k, v in {
        "DRYWALL_S3_BUCKET": "models-bucket",
        "DRYWALL_S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_MAX_ATTEMPTS": "1",
    }.items():
        monkeypatch.setenv(k, v)
    r = cli("registry", "list")
    assert r.code == 2 and "unexpected" not in r.err, r.err
    assert "artifact store http://127.0.0.1:9 (bucket models-bucket)" in r.err and "Could not connect" in r.err


def test_an_s3_endpoint_that_never_answers_fails_in_bounded_time(cli, monkeypatch) -> None:
    """It accepts the connection and says nothing: that took 369 s; now attempts x read timeout."""
    import socket
    import threading
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_stay_silent() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    for k, v in {
        "DRYWALL_S3_BUCKET": "models-bucket",
        "DRYWALL_S3_ENDPOINT_URL": f"http://127.0.0.1:{listener.getsockname()[1]}",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "DRYWALL_S3_READ_TIMEOUT_S": "1",
        "DRYWALL_S3_MAX_ATTEMPTS": "2",
    }.items():
        monkeypatch.setenv(k, v)
    try:
        t0 = time.monotonic()
        r = cli("registry", "list")
        took = time.monotonic() - t0
    finally:
        stop.set()
        for s in held:
            s.close()
        listener.close()
    assert r.code == 2 and "unexpected" not in r.err, r.err
    assert "Read timeout" in r.err or "timed out" in r.err.lower(), r.err
    assert took < 30, f"{took:.0f}s: the settings bound the wait"


def test_invalid_setting_is_named(cli, monkeypatch) -> None:
    monkeypatch.setenv("DRYWALL_TRAIN__EPOCHS", "many")
    r = cli("datasets")
    assert r.code == 2 and "invalid setting: DRYWALL_TRAIN__EPOCHS='many'" in r.err and "unexpected" not in r.err


def test_output_file_that_is_a_folder_is_named(cli, synthetic_cracks: Path, tmp_path: Path) -> None:
    r = cli("split", synthetic_cracks, "--out", tmp_path)
    assert r.code == 2 and f"error: {tmp_path}: cannot write here" in r.err, r.err
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left beside it"


def test_output_folder_that_cannot_be_written(cli, synthetic_cracks: Path, tmp_path: Path) -> None:
    """Root writes anywhere except a read-only file system: sysfs stands in for a read-only mount."""
    target = Path("/sys/drywall-qa-output")
    try:
        target.mkdir()
    except OSError:
        pass
    else:
        target.rmdir()
        pytest.skip("/sys is writable here; no read-only location to test with")
    for args in (["masks", synthetic_cracks, "--out", target], ["split", synthetic_cracks, "--out", target / "s.json"]):
        r = cli(*args)
        assert r.code == 2 and f"{target}" in r.err and "unexpected" not in r.err, r.err


def test_every_option_is_described(cli) -> None:
    """`--help` of every command describes each option (and the settings behind the defaults)."""
    import typer.main

    root = typer.main.get_command(app)
    bare = []
    for name in _commands(app):
        cmd = root
        for part in name.split():
            cmd = cmd.commands[part]
        bare += [f"{name} {p.opts[0]}" for p in cmd.params if p.param_type_name == "option" and not p.help]
    assert bare == [], f"options without a description: {bare}"


def test_offline_base_model_fails_in_one_line(tmp_path: Path) -> None:
    """A fresh process, as a user runs it: the hub library reads HF_HUB_OFFLINE once, at import (in
    this test process it would already be imported online, and wait out its network retries)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache
    drywall = Path(sys.executable).parent / "drywall"
    r = subprocess.run([drywall, "model", "info", "CIDAS/clipseg-rd64-refined"], env=env, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and "unexpected" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "HF_HUB_OFFLINE is set" in errors[0] and "DRYWALL_BASE_MODEL" in errors[0], r.stderr


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 64 KiB tmpfs, mounted in a private mount namespace of this test run (root only)."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "none", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.name.endswith(".tmp")]


def _assert_full_disk_named(cli, full_disk: Path, cases: dict[str, list]) -> None:
    """Each command on the full disk: exit 2, the path and "no space left on device", never a bug
    report, and no temporary file left behind."""
    for name, args in cases.items():
        r = cli(*map(str, args))
        assert r.code == 2, f"{name}: exit {r.code}\n{r.err}"
        assert "no space left on device" in r.err.lower(), f"{name}: {r.err}"
        assert "unexpected" not in r.err and "a bug" not in r.err, f"{name}: {r.err}"
        assert str(full_disk) in r.err, f"{name} names the path: {r.err}"
        assert not _leftovers(full_disk), f"{name} left {_leftovers(full_disk)}"


def test_a_full_disk_is_named_for_every_command_that_writes(
    cli, full_disk: Path, synthetic_cracks: Path, tiny_model_dir: Path, photo: Path
) -> None:
    """ENOSPC is a classified fault: exit 2, the path and 'no space left on device', no temporary
    file left behind (never "unexpected OSError ... (a bug)")."""
    big = full_disk / "filler"
    big.write_bytes(b"\0" * (60 * 1024))  # leave a few KiB: a command gets going, then the disk is full
    cases = {
        "masks": ["masks", synthetic_cracks, "--out", full_disk / "masks", "--workers", "1"],
        "predict": ["predict", photo, "--prompt", "segment crack", "--model", tiny_model_dir, "--out", full_disk / "p"],
        "sample": ["sample", "--out", full_disk / "sample"],
        "model init-tiny": ["model", "init-tiny", full_disk / "tiny"],
        "split": ["split", synthetic_cracks, "--out", full_disk / "split.json"],
        "validate --report": ["validate", synthetic_cracks, "--report", full_disk / "report.json"],
        "evaluate": ["evaluate", "--model", tiny_model_dir, "--export", synthetic_cracks, "--out", full_disk / "ev"],
        "drift": [
            "drift",
            "--reference",
            synthetic_cracks / "train",
            "--current",
            synthetic_cracks / "valid",
            "--out",
            full_disk / "drift",
        ],
        "label-queue --dry-run": [
            "label-queue",
            "--model",
            tiny_model_dir,
            "--images",
            photo.parent,
            "--workspace",
            "ws",
            "--project",
            "proj",
            "--prompt",
            "segment crack",
            "--dry-run",
            full_disk / "queue",
        ],
    }
    _assert_full_disk_named(cli, full_disk, cases)


def test_a_full_home_is_named_by_ingest_and_train(
    cli, full_disk: Path, synthetic_cracks: Path, tiny_model_dir: Path, monkeypatch
) -> None:
    """The stages that write under DRYWALL_HOME (masks, blobs, the local registry) name the file too."""
    (full_disk / "filler").write_bytes(b"\0" * (60 * 1024))
    monkeypatch.setenv("DRYWALL_HOME", str(full_disk / "home"))
    monkeypatch.setenv("DRYWALL_MASK_WORKERS", "1")
    cases = {
        "ingest": ["ingest", synthetic_cracks],
        "train": ["train", "--export", synthetic_cracks, "--out", full_disk / "run", "--model", tiny_model_dir],
    }
    _assert_full_disk_named(cli, full_disk, cases)


def test_a_failed_train_run_folder_is_taken_back_with_overwrite(tmp_path: Path) -> None:
    """A run that failed early leaves only run.json: a rerun is told to --resume or --overwrite, and
    --overwrite accepts the folder it made (it used to answer 'not a run folder')."""
    from drywall_core.base.errors import InputError
    from drywall_core.cli.model import _claim_run_folder

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    with pytest.raises(InputError, match="--resume to continue it or --overwrite"):
        _claim_run_folder(out, resume=False, overwrite=False)
    _claim_run_folder(out, resume=False, overwrite=True)
    assert not out.exists() or not any(out.iterdir())
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "IMG_1.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="not a run folder"):
        _claim_run_folder(stranger, resume=False, overwrite=True)
    assert (stranger / "IMG_1.jpg").exists()


def test_a_full_disk_is_named_by_pull_and_registry_pull(
    cli, full_disk: Path, synthetic_cracks: Path, artifact_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """The Roboflow pull (real SDK, loopback stand-in) and a registry download onto a full disk."""
    from drywall_core.base.storage import LocalStore
    from drywall_core.release.registry import ModelRegistry
    from tests.fakes.roboflow_api import FakeRoboflow, zip_export

    reg = ModelRegistry(LocalStore(tmp_path / "home" / "registry"), "clipseg-drywall")
    version = reg.publish(artifact_dir, version="v1")["version"]
    reg.promote(version, None)
    (full_disk / "filler").write_bytes(b"\0" * (60 * 1024))
    with FakeRoboflow("site-qa", "cracks-3ii36", 1, zip_export(synthetic_cracks), "testKey-abc123") as fake:
        monkeypatch.setenv("DRYWALL_ROBOFLOW_API_URL", fake.url)
        monkeypatch.setenv("DRYWALL_ROBOFLOW_API_KEY", "testKey-abc123")
        monkeypatch.setenv("DRYWALL_PULL_RETRIES", "0")
        cases = {
            "pull": ["pull", "--workspace", "site-qa", "--project", "cracks-3ii36", "--version", "1", "--out"]
            + [full_disk / "export"],
            "registry pull": ["registry", "pull", "champion", full_disk / "pulled"],
        }
        _assert_full_disk_named(cli, full_disk, cases)
    assert not (full_disk / "export").exists(), "a failed pull leaves --out absent"
