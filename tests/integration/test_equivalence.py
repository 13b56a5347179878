"""Both routes behave the same: each operation through its command and through its flow, on the same
inputs, gives equal records (snapshot ids, metrics, decisions, events). Both call one stage function
(:mod:`drywall_core.stages`); these tests keep it that way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.integration.test_flows import _events

pytestmark = pytest.mark.integration

BAD = {"epochs": 1, "lr": 1e-7}  # a candidate no better than the untrained champion: refused


@pytest.fixture
def cli(prefect_api):
    """The installed ``drywall``, as its own process (as a user runs it), on this test's DRYWALL_HOME;
    it sends its events where the flows send theirs: the session's Prefect API."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    from tests.conftest import CliResult

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}

    def run(*args) -> CliResult:
        command = [str(Path(sys.executable).parent / "drywall"), *map(str, args)]
        r = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        return CliResult(r.returncode, r.stdout, r.stderr)

    return run


def _local(export: Path):
    from flows.common import Source

    return Source(kind="local", path=str(export), dataset="cracks")


def _copied(export: Path) -> Path:
    """Where the flow's local source put its copy (the export the command is given, lineage and all)."""
    from drywall_core.base.config import get_settings

    return Path(get_settings().home).resolve() / "data" / f"local-{export.resolve().name}"


def test_ingest_gives_the_same_snapshot(cli, synthetic_root: Path) -> None:
    from flows.ingest import ingest

    export = synthetic_root / "synthetic-cracks.v1i.coco"
    (by_flow,) = ingest(sources=[_local(export)])
    r = cli("ingest", _copied(export), "--dataset", "cracks")
    assert r.code == 0, r.err
    assert f"snapshot {by_flow['ref']}:" in r.out, "the same content-addressed snapshot"
    c = by_flow["counts"]
    assert f"{c['train_images']} train / {c['val_images']} val images" in r.out
    assert "0 files uploaded" in r.out, "the flow stored it already"


def _champion(artifact_dir: Path, recorded_miou: float | None = None) -> str:
    from drywall_core.stages.context import model_registry

    reg = model_registry()
    extra = None
    if recorded_miou is not None:
        per_prompt = {"segment crack": {"miou": recorded_miou, "mean_dice": recorded_miou}}
        extra = {"metrics": {"per_prompt": per_prompt, "thresholds": {}}}
    version = reg.publish(artifact_dir, extra=extra)["version"]
    reg.promote(version, None)
    return version


def test_champion_evaluation_is_the_same(cli, artifact_dir: Path, synthetic_root: Path) -> None:
    from drywall_core.stages.context import model_registry
    from flows.evaluate import evaluate_champion

    export = synthetic_root / "synthetic-cracks.v1i.coco"
    version = _champion(artifact_dir, recorded_miou=0.99)
    by_flow = evaluate_champion(sources=[_local(export)])
    r = cli("registry", "evaluate", "--export", _copied(export), "--dataset", "cracks")
    assert r.code == 1 and "regression: 'segment crack'" in r.err, r.err
    reg = model_registry()
    stored = [json.loads(reg.store.get_bytes(k)) for k in sorted(reg.store.list(f"{reg.root}/evaluations/"))]
    assert len(stored) == 2
    flow_eval, cli_eval = stored
    assert flow_eval["regressions"] == cli_eval["regressions"] == by_flow["regressions"]
    assert flow_eval["datasets"]["cracks"]["miou"] == cli_eval["datasets"]["cracks"]["miou"]
    assert flow_eval["overall"] == cli_eval["overall"]
    sent = _events("drywall.model.regressed", lambda e: e["payload"].get("version") == version, at_least=2)
    assert len(sent) == 2, "both routes emitted the regression"
    assert sent[0]["payload"]["regressions"] == sent[1]["payload"]["regressions"]


def test_judge_and_publish_is_the_same(
    cli, artifact_dir: Path, tiny_model_dir: Path, synthetic_root: Path, cracks_export: Path
) -> None:
    """The retrain flow's gate and `drywall registry publish` on the same candidate, champion, held-out
    images and field photos: the same measurements, shadow comparison, decision and refusal event."""
    from drywall_core.base.config import get_settings
    from drywall_core.stages.context import model_registry
    from flows.retrain import retrain

    settings = get_settings()
    field = Path(settings.field_images_dir)
    field.mkdir(parents=True)
    for p in sorted((cracks_export / "valid").glob("*.jpg"))[:3]:
        shutil.copyfile(p, field / p.name)
    export = synthetic_root / "synthetic-cracks.v1i.coco"
    champion = _champion(artifact_dir)
    state = retrain(
        sources=[_local(export)], base_model=str(tiny_model_dir), overrides=BAD, force=True, return_state=True
    )
    by_flow = state.result()
    assert by_flow["promoted"] is False, by_flow

    # the same candidate as a `drywall train` run folder: its model, its claim, its exports and split
    work = Path(settings.home).resolve() / "runs" / "retrain" / str(state.state_details.flow_run_id)
    run = Path(settings.home) / "cli-run"
    shutil.copytree(work / "candidate", run)
    inputs = {"exports": [str(_copied(export))], "datasets": ["cracks"], "split_seed": settings.split_seed,
              "val_fraction": settings.val_fraction}  # fmt: skip
    (run / "run.json").write_text(json.dumps(inputs))
    r = cli("registry", "publish", run)
    assert r.code == 1, r.out + r.err

    reg = model_registry()
    assert reg.champion_version() == champion
    flow_version = by_flow["version"]
    (cli_version,) = [v for v in reg.versions() if v not in (champion, flow_version)]
    a, b = reg.show(flow_version)["gate"], reg.show(cli_version)["gate"]
    assert a["promote"] is b["promote"] is False
    assert a["reasons"] == b["reasons"] and a["rows"] == b["rows"], (a, b)
    assert a["candidate_miou"] == b["candidate_miou"] and a["champion_miou"] == b["champion_miou"]
    # the shadow runs the int8 models, whose activation scales are per batch: how a host's threads split
    # a batch moves an agreement in the third decimal, so the two routes agree to within that
    assert a["shadow"]["images"] == b["shadow"]["images"] == 3, "both compared on the field photos"
    assert a["shadow"]["prompts"].keys() == b["shadow"]["prompts"].keys()
    for prompt, row in a["shadow"]["prompts"].items():
        other = b["shadow"]["prompts"][prompt]
        assert row["images"] == other["images"] and row["agreement"] == pytest.approx(other["agreement"], abs=0.005)
    ours = (flow_version, cli_version)
    sent = _events("drywall.gate.refused", lambda e: e["payload"].get("version") in ours, at_least=2)
    refused = {e["payload"]["version"]: e for e in sent}
    assert set(refused) == {flow_version, cli_version}, "both routes emitted the refusal"
    ea, eb = refused[flow_version], refused[cli_version]
    assert ea["payload"]["reasons"] == eb["payload"]["reasons"] and ea["payload"]["champion"] == champion
    assert ea["resource"]["drywall.regression"] == eb["resource"]["drywall.regression"]

    # drift: the flow against the champion's profile with its model signals, the command likewise
    reg.promote(flow_version, reg.champion()[1], reason="test: a champion with a reference profile")
    from flows.drift import drift

    by_flow_drift = drift(folder=str(field))
    profile = Path(settings.home) / "profile" / "reference_profile.parquet"
    profile.parent.mkdir()
    reg.store.get_file(reg.version_key(flow_version, "reference_profile.parquet"), profile)
    out = Path(settings.home) / "cli-drift"
    r = cli("drift", "--reference", profile, "--current", field, "--out", out, "--model", "registry:champion")
    assert r.code == (1 if by_flow_drift["drift_detected"] else 0), r.err
    by_cli = json.loads((out / "drift.json").read_text())
    assert by_flow_drift["model_signals"] == by_cli["model_signals"] == "on"
    assert by_flow_drift["columns"] == by_cli["columns"] and "fg_fraction__segment_crack" in by_cli["columns"]
    assert by_flow_drift["drifted_share"] == by_cli["drifted_share"]
