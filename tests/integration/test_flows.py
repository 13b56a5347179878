"""Flows under a real (temporary) Prefect server: ingest, retrain with the gate, champion evaluation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import edit_coco

pytestmark = pytest.mark.integration

GOOD = {"epochs": 20, "lr": 1e-2, "patience": 20}  # the demo recipe
BAD = {"epochs": 1, "lr": 1e-7}


def _events(name: str, match, tries: int = 40, at_least: int = 1) -> list[dict]:
    """At least ``at_least`` events of that name the Prefect API holds that ``match``, or what there is
    after ``tries`` polls (events are written asynchronously)."""
    import time

    import httpx
    from prefect.settings import PREFECT_API_URL

    found: list[dict] = []
    for _ in range(tries):
        r = httpx.post(
            f"{PREFECT_API_URL.value()}/events/filter",
            json={"filter": {"event": {"name": [name]}}, "limit": 50},
            timeout=30,
        )
        found = [e for e in r.json()["events"] if match(e)]
        if len(found) >= at_least:
            return found
        time.sleep(0.5)
    return found


def _artifacts(flow_run_id) -> dict[str, object]:
    """Artifacts of one flow run (not of the whole session)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )

    return {a.key: a for a in asyncio.run(read()) if a.key}


def _subflow_runs(flow_run_id) -> list:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async def read():
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
            )

    return asyncio.run(read())


def test_ingest_fails_cleanly_on_a_broken_export(prefect_api, synthetic_cracks: Path, tmp_path: Path) -> None:
    from flows.common import Source
    from flows.ingest import ingest

    def negative(coco: dict) -> None:
        coco["annotations"][0]["bbox"][2] = -4

    edit_coco(synthetic_cracks, "train", negative)
    state = ingest(sources=[Source(kind="local", path=str(synthetic_cracks), dataset="cracks")], return_state=True)
    assert state.is_failed()
    assert "bbox width not positive" in state.message or "validation failed" in str(state.message)
    home = Path(tmp_path / "home")
    assert not (home / "masks").exists(), "nothing downstream of validation ran"
    arts = _artifacts(state.state_details.flow_run_id)
    assert "validation-cracks" in arts and "validation-failures-cracks" in arts
    assert "bbox width not positive" in arts["validation-failures-cracks"].data


HOSTILE_NAME = "wall `01` <img src=x onerror=alert(1)> [x](javascript:alert(1)) <script>alert(2)"  # no "/": a file name


def _inert(markdown_text: str) -> None:
    """Markdown in which no outside value is markup: no raw tag, no link target, balanced code spans."""
    assert "<img" not in markdown_text and "<script" not in markdown_text, markdown_text
    assert "](javascript:" not in markdown_text and "[x](" not in markdown_text, markdown_text
    assert "`01`" not in markdown_text, "a backtick from a file name never opens a code span"


def test_hostile_file_names_stay_text_in_artifacts(prefect_api, synthetic_cracks: Path, tmp_path: Path) -> None:
    """A file name carrying markdown and HTML, through the ingest flow, into its failure artifact."""
    from flows.common import Source
    from flows.ingest import ingest

    def hostile(coco: dict) -> None:
        image = coco["images"][0]
        old = synthetic_cracks / "train" / image["file_name"]
        image["file_name"] = f"{HOSTILE_NAME}.jpg"
        old.rename(old.parent / image["file_name"])
        first = next(a for a in coco["annotations"] if a["image_id"] == image["id"])
        first["bbox"][2] = -4

    edit_coco(synthetic_cracks, "train", hostile)
    state = ingest(sources=[Source(kind="local", path=str(synthetic_cracks), dataset="cracks")], return_state=True)
    assert state.is_failed()
    failures = _artifacts(state.state_details.flow_run_id)["validation-failures-cracks"].data
    assert "bbox width not positive" in failures and "onerror=alert" in failures, "the name is still shown"
    _inert(failures)


def test_hostile_names_stay_text_in_the_model_card() -> None:
    from drywall_core.release.model_card import render_card

    record = {
        "version": "v1",
        "base_model": HOSTILE_NAME,
        "lineage": [
            {
                "dataset": HOSTILE_NAME,
                "snapshot": "ab" * 32,
                "source": {"source": "roboflow", "workspace": HOSTILE_NAME, "project": "p", "version": 1},
            }
        ],
        "gate": {"promote": False, "reasons": [f"'{HOSTILE_NAME}': mIoU 0.1 below floor"], "shadow": {}},
        "metrics": {"per_prompt": {HOSTILE_NAME: {}}},
    }
    metrics = {"datasets": {"d": {"prompt": HOSTILE_NAME, "miou": 0.1, "mean_dice": 0.2}}, "overall": {}}
    card = render_card(record, metrics)
    assert card.count("onerror=alert") >= 5, "every hostile value is shown"
    _inert(card)


def test_ingest_real_export(prefect_api, drywall_export: Path, tmp_path: Path) -> None:
    from drywall_core.base.config import get_settings
    from drywall_core.base.storage import store_from_settings
    from drywall_core.data.snapshots import read_manifest
    from flows.common import Source
    from flows.ingest import ingest

    records = ingest(sources=[Source(kind="local", path=str(drywall_export))])
    (rec,) = records
    assert rec["dataset"] == "drywall-join" and rec["ref"] == f"drywall-join/{rec['snapshot']}"
    assert rec["counts"]["train_images"] + rec["counts"]["val_images"] == 920
    assert not {"export", "masks", "split"} & set(rec), "a record carries store references, not this host's paths"
    manifest = read_manifest(store_from_settings(get_settings()), rec["ref"])
    assert len(manifest["images"]) == 920 and manifest["lineage"]["source"] == "local"
    assert not (drywall_export / "split.json").exists(), "the export folder is read, never written"
    again = ingest(sources=[Source(kind="local", path=str(drywall_export))])
    assert again[0]["ref"] == rec["ref"] and again[0]["uploaded_files"] == 0, "same content, same snapshot"


def test_retrain_promotes_then_refuses_a_worse_candidate(
    prefect_api, tiny_model_dir: Path, synthetic_root: Path, tmp_path: Path
) -> None:
    from drywall_core.base.config import get_settings
    from drywall_core.stages.context import model_registry as registry
    from flows.common import Source
    from flows.evaluate import evaluate_champion
    from flows.retrain import retrain

    state = retrain(
        sources=[Source(kind="synthetic", seed=0)], base_model=str(tiny_model_dir), overrides=GOOD, return_state=True
    )
    first, first_run = state.result(), state.state_details.flow_run_id
    assert first["promoted"], first["reason"]
    assert "retrain-settings" in _artifacts(first_run)
    reg = registry()
    assert reg.champion_version() == first["version"]
    champion_manifest = reg.show(first["version"])
    assert champion_manifest["lineage"][0]["dataset"] in ("cracks", "drywall-join")
    assert champion_manifest["settings"]["train"]["lr"] == GOOD["lr"] and champion_manifest["settings"]["gate"]
    assert champion_manifest["staging"].endswith(f"staging/{first_run}"), "published from the staging area"
    assert reg.store.exists(f"staging/{first_run}/candidate.json")
    assert {"decoder.safetensors", "config.json", "metrics.json"} <= set(champion_manifest["files"])
    assert "MODEL_CARD.md" in champion_manifest["files"]
    card = reg.card(first["version"])
    assert card == _artifacts(first_run)["model-card"].data
    for section in ("## Training data", "## Evaluation", "## Promotion gate", "## Known limits", "boundary F1"):
        assert section in card
    assert "shadow: no champion" in card and "Threshold sweep" in card and "weak box labels" in card
    for item in champion_manifest["lineage"]:
        assert f"`{item['snapshot'][:16]}`" in card and "Great Expectations" in card
    trained_from = champion_manifest["trained_from"]
    assert set(trained_from["snapshots"]) == {"cracks", "drywall-join"}
    assert trained_from["train_config"]["lr"] == GOOD["lr"] and trained_from["base_fingerprint"]

    state = retrain(  # the same data, model and recipe again: nothing new
        sources=[Source(kind="synthetic", seed=0)], base_model=str(tiny_model_dir), overrides=GOOD, return_state=True
    )
    same = state.result()
    assert same["trained"] is False and same["reason"] == "nothing new" and same["version"] is None
    assert state.is_completed() and reg.versions() == [first["version"]], "nothing trained, nothing published"
    assert "Nothing new" in _artifacts(state.state_details.flow_run_id)["retrain-nothing-new"].data

    field_dir = get_settings().field_images_dir  # site photos have arrived: the gate runs a shadow comparison
    field_dir.mkdir(parents=True)
    for photo in sorted((synthetic_root / "synthetic-cracks.v1i.coco" / "valid").glob("*.jpg"))[:3]:
        shutil.copyfile(photo, field_dir / photo.name)
    state = retrain(
        sources=[Source(kind="synthetic", seed=0)], base_model=str(tiny_model_dir), overrides=BAD, return_state=True
    )
    second = state.result()
    assert not second["promoted"]
    assert reg.champion_version() == first["version"], "the champion stays"
    assert set(reg.versions()) == {first["version"], second["version"]}
    log = reg.audit_log()
    assert [e["action"] for e in log] == ["promote", "refuse"]
    assert log[1]["decision"]["champion_miou"] is not None
    shadow = log[1]["decision"]["shadow"]
    assert set(shadow["prompts"]) == {"segment crack", "segment taping area"} and shadow["images"] == 3
    assert "shadow: 'segment crack' agreement" in log[1]["reason"], "the audit line carries the shadow result"
    arts = _artifacts(state.state_details.flow_run_id)
    assert "retrain-gate" in arts and "REFUSE" in arts["retrain-gate"].data
    assert "candidate mIoU" in arts["retrain-gate"].data and "champion mIoU" in arts["retrain-gate"].data
    assert "on 3 field images" in arts["retrain-gate"].data
    refused = _events("drywall.gate.refused", lambda e: e["payload"]["version"] == second["version"])
    regressed = any("regresses" in r for r in log[1]["decision"]["reasons"])
    assert refused and refused[0]["resource"]["drywall.regression"] == str(regressed).lower(), "what alerts listen to"
    assert {"retrain-metrics", "retrain-training-curve", "retrain-best-worst"} <= set(arts)
    children = _subflow_runs(state.state_details.flow_run_id)
    assert any("training-progress" in _artifacts(c.id) for c in children), "this run's train subflow reports progress"

    result = evaluate_champion(sources=[Source(kind="synthetic", seed=0)])
    assert result["version"] == first["version"] and result["regressions"] == []
    evals = [k for k in reg.store.list(f"{reg.root}/evaluations/")]
    assert len(evals) == 1
    assert json.loads(reg.store.get_bytes(evals[0]))["version"] == first["version"]
    from evidently.ui.workspace import Workspace

    ws = Workspace(str(get_settings().evidently_root))
    (project,) = ws.search_project("clipseg-drywall")
    assert len(ws.list_runs(project.id)) == 1, "the nightly evaluation is recorded over time"


def test_drift_flow_reports_and_emits_on_drift(
    prefect_api, artifact_dir: Path, drywall_export: Path, cracks_export: Path, tmp_path: Path
) -> None:
    import shutil
    import time

    import httpx
    from prefect.settings import PREFECT_API_URL

    from drywall_core.field.drift import PROFILE_FILE, find_images, write_reference_profile
    from drywall_core.stages.context import model_registry as registry
    from flows.drift import drift

    art = tmp_path / "artifact"
    shutil.copytree(artifact_dir, art)
    write_reference_profile(find_images(drywall_export / "train"), art / PROFILE_FILE)
    reg = registry()
    version = reg.publish(art)["version"]
    reg.promote(version, None)
    assert PROFILE_FILE in reg.show(version)["files"]

    calm = drift(folder=str(drywall_export / "valid"))
    assert calm["drift_detected"] is False and calm["event_id"] is None and calm["champion"] == version

    state = drift(folder=str(cracks_export), return_state=True)
    result = state.result()
    assert result["drift_detected"] is True and result["event_id"]
    arts = _artifacts(state.state_details.flow_run_id)
    assert {"drift-report", "drift-json", "drift-summary"} <= set(arts)
    assert "DRIFT DETECTED" in arts["drift-summary"].data
    from evidently.ui.workspace import Workspace

    from drywall_core.base.config import get_settings

    ws = Workspace(str(get_settings().evidently_root))  # no Evidently service configured: the home's workspace
    (project,) = ws.search_project("clipseg-drywall")
    assert len(ws.list_runs(project.id)) == 2, "every drift run is a point in the project's history"

    api = PREFECT_API_URL.value()
    for _ in range(40):
        r = httpx.post(
            f"{api}/events/filter",
            json={"filter": {"event": {"name": ["drywall.drift.detected"]}}, "limit": 50},
            timeout=30,
        )
        found = [e for e in r.json()["events"] if e["id"] == result["event_id"]]
        if found:
            break
        time.sleep(0.5)
    assert found and found[0]["payload"]["champion"] == version


def test_retrain_and_drift_on_the_s3_store(
    prefect_api, s3_server, tiny_model_dir: Path, drywall_export: Path, tmp_path: Path, monkeypatch
) -> None:
    """Production-like storage: registry, reports and field images in S3 (SeaweedFS on loopback)."""
    from drywall_core.base.config import get_settings
    from drywall_core.base.storage import S3Store
    from drywall_core.stages.context import model_registry as registry
    from flows.common import Source
    from flows.drift import drift
    from flows.retrain import retrain

    prefix = f"run-{tmp_path.name}"
    for k, v in {**s3_server.env(), "DRYWALL_S3_PREFIX": prefix}.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()

    state = retrain(
        sources=[Source(kind="synthetic", seed=0)], base_model=str(tiny_model_dir), overrides=GOOD, return_state=True
    )
    result = state.result()
    assert result["promoted"], result["reason"]
    reg = registry()
    assert isinstance(reg.store, S3Store)
    assert reg.champion_version() == result["version"]
    keys = reg.store.list(f"models/{reg.name}/versions/{result['version']}/")
    assert {k.rsplit("/", 1)[-1] for k in keys} >= {"decoder.safetensors", "manifest.json", "reference_profile.parquet"}
    grid = _artifacts(state.state_details.flow_run_id)["retrain-best-worst"]
    assert grid.type == "image" and grid.data.startswith(s3_server.endpoint), "a presigned S3 URL"

    field = S3Store(s3_server.bucket, "", s3_server.client())
    for p in sorted((drywall_export / "valid").glob("*.jpg"))[:20]:
        field.put_file(p, f"{prefix}-field/day1/{p.name}")
    out = drift(bucket=s3_server.bucket, prefix=f"{prefix}-field/day1/")
    assert out["n_current"] == 20 and out["champion"] == result["version"]
    assert out["drift_detected"] is True, "real drywall photos against a synthetic-wall reference"

    # the flows check keys again (the receiver is not the only way in): refused by name, at once
    import time

    escape = tmp_path / "escape"
    t0 = time.monotonic()
    refused = drift(
        bucket=s3_server.bucket, keys=[f"{prefix}-field/day1/x.jpg", str(escape / "E.jpg")], return_state=True
    )
    assert refused.is_failed() and "S3 key" in str(refused.message) and "absolute path" in str(refused.message)
    assert time.monotonic() - t0 < 30, "a refused name is not retried"
    assert not escape.exists()


def _event(name: str, event_id: str) -> dict | None:
    import time

    import httpx
    from prefect.settings import PREFECT_API_URL

    for _ in range(40):
        r = httpx.post(
            f"{PREFECT_API_URL.value()}/events/filter", json={"filter": {"event": {"name": [name]}}}, timeout=30
        )
        found = [e for e in r.json()["events"] if e["id"] == event_id]
        if found:
            return found[0]
        time.sleep(0.5)
    return None


def test_champion_regression_emits_model_regressed(prefect_api, artifact_dir: Path, tmp_path: Path) -> None:
    """A champion that now scores far below what it scored at promotion raises drywall.model.regressed."""
    import shutil

    from drywall_core.stages.context import model_registry as registry
    from flows.common import Source
    from flows.evaluate import evaluate_champion

    art = tmp_path / "artifact"
    shutil.copytree(artifact_dir, art)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["metrics"] = {"per_prompt": {"segment crack": {"miou": 0.99}, "segment taping area": {"miou": 0.0}}}
    (art / "manifest.json").write_text(json.dumps(manifest))
    reg = registry()
    version = reg.publish(art)["version"]
    reg.promote(version, None)
    result = evaluate_champion(sources=[Source(kind="synthetic", seed=0)])
    assert result["version"] == version
    assert [r.split(":")[0] for r in result["regressions"]] == ["'segment crack'"], "only the prompt that fell"
    event = _event("drywall.model.regressed", result["event_id"])
    assert event and event["payload"]["version"] == version
    assert event["payload"]["regressions"] == result["regressions"]


def test_promotion_race_is_lost_cleanly_and_audited(artifact_dir: Path) -> None:
    from drywall_core.stages.context import model_registry as registry

    reg = registry()
    a, b, c = (reg.publish(artifact_dir, version=v)["version"] for v in ("ra", "rb", "rc"))
    reg.promote(a, None)
    seen = reg.champion()[1]  # what this run's gate saw
    reg.promote(b, seen)  # another run promotes first
    decision = {"promote": True, "reasons": ["better"]}
    out = reg.settle(c, seen, decision)  # what publishing does with the gate's decision
    assert out == {"promoted": False, "version": c, "reason": f"lost the promotion race to {b}"}
    assert reg.champion_version() == b
    last = reg.audit_log()[-1]
    assert last["action"] == "refuse" and last["version"] == c and "concurrent run promoted rb" in last["reason"]


def test_predict_field_flow_stores_predictions_once_and_reports_the_uncertain(
    prefect_api, artifact_dir: Path, cracks_export: Path, tmp_path: Path, monkeypatch
) -> None:
    import shutil

    from evidently.ui.workspace import Workspace

    from drywall_core.base.config import get_settings
    from drywall_core.field.predictions import read_summary
    from drywall_core.stages.context import model_registry as registry
    from flows.predict_field import predict_field

    monkeypatch.delenv("ROBOFLOW_API_KEY", raising=False)
    reg = registry()
    version = reg.publish(artifact_dir)["version"]
    reg.promote(version, None)
    photos = tmp_path / "field"
    photos.mkdir()
    for p in sorted((cracks_export / "valid").glob("*.jpg"))[:3]:
        shutil.copyfile(p, photos / p.name)

    state = predict_field(folder=str(photos), return_state=True)
    first = state.result()
    assert first["version"] == version and first["predicted"] == 3 and first["already"] == 0
    summary = read_summary(reg.store, version)
    assert len(summary) == 3 * 2 and set(summary["prompt"]) == {"segment crack", "segment taping area"}
    arts = _artifacts(state.state_details.flow_run_id)
    table = json.loads(arts["field-most-uncertain"].data)
    assert len(table) == 6 and table[0]["uncertain share"] >= table[-1]["uncertain share"]
    assert all(row["mask"].startswith("file://") or "predictions" in row["mask"] for row in table)
    assert "no Roboflow API key" in arts["label-queue"].data, "skipped, and says why"

    again = predict_field(folder=str(photos))
    assert again["predicted"] == 0 and again["already"] == 3, "a version predicts each photo once"
    ws = Workspace(str(get_settings().evidently_root))
    (project,) = ws.search_project("clipseg-drywall")
    assert len(ws.list_runs(project.id)) == 1, "the field signals of the run with new photos are recorded"


def test_a_rerun_of_a_crashed_retrain_gates_its_staged_candidate(
    prefect_api, tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """The first attempt stages its candidate and dies before the gate; the retry (same flow run id,
    as Prefect retries and the UI's Retry run it) finds the candidate and does not train again."""
    import tasks.release as release_tasks
    from flows.common import Source
    from flows.retrain import retrain

    real = release_tasks.judge_and_publish_task.fn
    calls = {"n": 0}

    def dies_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("the Prefect API went away after training")
        return real(*args, **kwargs)

    monkeypatch.setattr(release_tasks.judge_and_publish_task, "fn", dies_once)
    import flows.retrain as retrain_module

    trained: list[str] = []
    real_train = retrain_module.train_flow

    def counting_train(**params):
        trained.append(params["staging"])
        return real_train(**params)

    monkeypatch.setattr(retrain_module, "train_flow", counting_train)
    state = retrain.with_options(retries=1, retry_delay_seconds=0)(
        sources=[Source(kind="synthetic", seed=0)], base_model=str(tiny_model_dir), overrides=GOOD, return_state=True
    )
    assert state.is_completed(), state.message
    run_id = str(state.state_details.flow_run_id)
    assert calls["n"] == 2 and trained == [run_id], "trained once; the retry gated the staged candidate"
    assert state.result()["staging"].endswith(f"staging/{run_id}")
