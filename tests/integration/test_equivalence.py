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

    api = PREFECT_API_URL.value()

    def run(*args) -> CliResult:
        command = [str(Path(sys.executable).parent / "drywall"), *map(str, args)]
        env = {**os.environ, "PREFECT_API_URL": api}  # as the test has set it by now
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


def _tree(root: Path) -> dict[str, str]:
    from drywall_core.data.exports import LINEAGE_FILE, sha256_file

    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != LINEAGE_FILE]
    return {str(p.relative_to(root)): sha256_file(p) for p in files}


def test_pull_gives_the_same_export_and_lineage(cli, sample_data: Path, tmp_path: Path, monkeypatch) -> None:
    """`drywall pull` and the ingest flow's pull task, through the real SDK against one loopback
    Roboflow API: byte-identical files and the same lineage (but for when it was recorded)."""
    from prefect import flow

    from drywall_core.base.config import get_settings
    from drywall_core.data.exports import LINEAGE_FILE
    from tasks.data import pull_task
    from tests.fakes.roboflow_api import FakeRoboflow, zip_export

    key = "testKey-abc123"
    with FakeRoboflow("site-qa", "cracks-3ii36-johwn", 1, zip_export(sample_data / "cracks.v1i.coco"), key) as api:
        monkeypatch.setenv("DRYWALL_ROBOFLOW_API_URL", api.url)
        monkeypatch.setenv("DRYWALL_ROBOFLOW_API_KEY", key)
        get_settings.cache_clear()

        @flow
        def pull_only(out: str) -> str:
            return pull_task(api.workspace, api.project, 1, out)

        by_flow = Path(pull_only(str(tmp_path / "by-flow")))
        by_cli = tmp_path / "by-cli"
        r = cli("pull", "--workspace", api.workspace, "--project", api.project, "--version", "1", "--out", by_cli)
        assert r.code == 0, r.err
        assert api.downloads == 2, "each route downloaded (neither reused the other's folder)"
    assert _tree(by_flow) == _tree(by_cli) and len(_tree(by_cli)) > 100
    lineages = [json.loads((d / LINEAGE_FILE).read_text()) for d in (by_flow, by_cli)]
    for lineage in lineages:
        assert lineage.pop("recorded_at")
    assert lineages[0] == lineages[1]


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


def test_label_queue_is_the_same(cli, artifact_dir: Path, cracks_export: Path, tmp_path: Path, monkeypatch) -> None:
    """The predict-field flow's label queue and `drywall label-queue` on the same champion and photos
    (each on its own copy of the home, so neither sees the other's queue): the same photos uploaded
    in the same order, each with the same prediction as its pre-annotation."""
    import numpy as np

    from drywall_core.base.config import get_settings
    from drywall_core.field import label_queue as lq
    from flows.predict_field import predict_field
    from tests.fakes.roboflow_api import FakeRoboflow
    from tests.integration.test_production_path import _registry_on

    key, ws, project = "testKey-queue42", "site-qa", "cracks-3ii36-johwn"
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((cracks_export / "valid").glob("*.jpg"))[:6]:
        shutil.copyfile(p, photos / p.name)
    settings = {"DRYWALL_ROBOFLOW_API_KEY": key, "DRYWALL_INFERENCE_PRECISION": "fp32",
                "DRYWALL_LABEL_QUEUE__PER_RUN": "3"}  # fmt: skip
    for name, value in settings.items():  # fp32: int8's per-batch scales would let threads order a tie
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    _champion(artifact_dir)
    home = Path(get_settings().home)
    shutil.copytree(home, tmp_path / "cli-home")

    uploads = {}
    for route in ("flow", "cli"):
        with FakeRoboflow(ws, project, 1, b"", key) as fake:
            monkeypatch.setenv("DRYWALL_ROBOFLOW_API_URL", fake.url)
            monkeypatch.setenv("DRYWALL_DATASETS_FILE", str(_registry_on(fake, tmp_path / "datasets.yaml")))
            get_settings.cache_clear()
            if route == "flow":
                predict_field(folder=str(photos), batch="equivalence")
            else:
                monkeypatch.setenv("DRYWALL_HOME", str(tmp_path / "cli-home"))
                args = ["--model", "registry:champion", "--images", photos, "--workspace", ws, "--project", project]
                r = cli("label-queue", *args, "--top", "3", "--batch", "equivalence")
                assert r.code == 0, r.out + r.err
            uploads[route] = (list(fake.uploads), list(fake.annotations))
    (flow_up, flow_ann), (cli_up, cli_ann) = uploads["flow"], uploads["cli"]
    assert [u["name"] for u in flow_up] == [u["name"] for u in cli_up] and len(flow_up) == 3
    assert {u["batch"] for u in flow_up + cli_up} == {"equivalence"}
    for a, b in zip(flow_ann, cli_ann, strict=True):
        img = a["coco"]["images"][0]
        assert img == b["coco"]["images"][0]
        masks = [lq.rasterise([s for x in ann["coco"]["annotations"] for s in x["segmentation"]],
                              img["height"], img["width"]) for ann in (a, b)]  # fmt: skip
        inter, union = np.logical_and(*masks).sum(), np.logical_or(*masks).sum()
        assert union == 0 or inter / union >= 0.99, f"{img['file_name']}: the pre-annotations differ"


def test_training_gives_the_same_candidate(prefect_api, tiny_model_dir: Path, synthetic_root: Path, tmp_path) -> None:
    """`drywall train` on an export and the train flow on its ingested snapshot: the same decoder,
    bit for bit, and the same held-out metrics. Both fit through ``release/candidates.fit_candidate``;
    it puts the samples in one order of their content first (a snapshot names its files by sha256, an
    export by their upload names: before, the seeded shuffle drew other batches, and the decoders
    differed by up to 0.064 in a weight). The activation cache is float32 and torch runs one thread
    in both, so no sum is reordered (int8 cache scales follow the thread split in their low bits)."""
    import os
    import subprocess
    import sys

    import torch

    from drywall_core.base.config import TrainConfig
    from drywall_core.base.fsutil import sha256_file
    from flows.ingest import ingest
    from flows.train import train_flow

    export = synthetic_root / "synthetic-cracks.v1i.coco"
    (snap,) = ingest(sources=[_local(export)])
    cfg = TrainConfig(epochs=2, lr=1e-2, patience=20, cache_dtype="float32", flip=False, seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        by_flow = train_flow(snapshots=[snap["ref"]], base_model=str(tiny_model_dir), train_config=cfg.model_dump())
    finally:
        torch.set_num_threads(threads)
    run = tmp_path / "run"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "drywall"), "train", "--export", str(_copied(export)), "--dataset",
         "cracks", "--out", str(run), "--model", str(tiny_model_dir), "--epochs", "2", "--lr", "1e-2",
         "--patience", "20", "--no-flip", "--seed", "3"],
        env={**os.environ, "OMP_NUM_THREADS": "1", "DRYWALL_TRAIN__CACHE_DTYPE": "float32"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert by_flow["summary"]["best_epoch"] == json.loads((run / "train_summary.json").read_text())["best_epoch"]
    assert by_flow["overall"] == json.loads((run / "eval" / "metrics.json").read_text())["overall"]
    assert by_flow["model_sha256"]["decoder.safetensors"] == sha256_file(run / "model" / "decoder.safetensors")
