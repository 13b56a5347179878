"""`drywall train`, `drywall evaluate` and `drywall predict` end to end on the tiny model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drywall_core.model.load import load_model
from drywall_core.model.predict import output_name


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, synthetic_exports: list[Path], tmp_path_factory) -> Path:
    """A fine-tuned artifact from the real `drywall train` command (a few epochs)."""
    import subprocess
    import sys

    run = tmp_path_factory.mktemp("run") / "run"
    env = {"DRYWALL_HOME": str(run.parent / "home"), "PATH": str(Path(sys.executable).parent)}
    cmd = [
        str(Path(sys.executable).parent / "drywall"),
        "train",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(run),
        "--epochs",
        "4",
        "--lr",
        "3e-3",
        *[a for e in synthetic_exports for a in ("--export", str(e))],
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (run.parent / "stdout.txt").write_text(r.stdout)
    return run


def test_train_command_outputs(trained: Path) -> None:
    for name in (
        "checkpoint.pt",
        "metrics.jsonl",
        "training_curve.png",
        "train_summary.json",
        "model/decoder.safetensors",
        "model/manifest.json",
        "model/metrics.json",
        "eval/metrics.md",
        "eval/best_worst.png",
    ):
        assert (trained / name).is_file(), name
    manifest = json.loads((trained / "model" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"decoder.safetensors", "config.json", "metrics.json", "reference_profile.parquet"}
    assert set(manifest["metrics"]["per_prompt"]) == {"segment crack", "segment taping area"}
    assert manifest["metrics"]["thresholds"]["segment crack"] in [round(0.1 * i, 1) for i in range(1, 10)]


def test_train_reports_what_it_recorded(trained: Path) -> None:
    last = (trained.parent / "stdout.txt").read_text().strip().splitlines()[-1]
    summary = json.loads((trained / "train_summary.json").read_text())
    assert f"best epoch {summary['best_epoch']}/{summary['epochs_run']}" in last
    assert f"val mIoU {summary['best_val_miou']:.3f} (train_summary.json)" in last
    metrics = json.loads((trained / "eval" / "metrics.json").read_text())
    assert metrics["model"]["fine_tuned"] is True


def test_train_refuses_to_mix_runs_in_one_folder(cli, trained: Path, tiny_model_dir: Path, synthetic_exports, tmp_path):
    before = (trained / "checkpoint.pt").read_bytes()
    r = cli("train", "--export", synthetic_exports[0], "--out", trained, "--model", tiny_model_dir)
    assert r.code == 2 and "pass --resume to continue it or --overwrite" in r.err
    assert (trained / "checkpoint.pt").read_bytes() == before
    other = tmp_path / "photos"
    other.mkdir()
    (other / "keep.jpg").write_bytes(b"mine")
    r = cli("train", "--export", synthetic_exports[0], "--out", other, "--model", tiny_model_dir, "--overwrite")
    assert r.code == 2 and "not a run folder" in r.err and (other / "keep.jpg").read_bytes() == b"mine"


def test_evaluate_command(cli, trained: Path, synthetic_exports: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", "--model", trained / "model", "--out", out]
    r = cli(*args, *[a for e in synthetic_exports for a in ("--export", e)])
    assert r.code == 0, r.err
    assert "| segment crack |" in r.out and "| segment taping area |" in r.out
    m = json.loads((out / "metrics.json").read_text())
    crack = m["datasets"]["cracks"]
    assert {"miou", "mean_dice", "boundary_f1", "best_threshold", "sweep", "prompt_robustness"} <= set(crack)
    assert len(crack["prompt_robustness"]) >= 5
    synonyms = list(crack["prompt_robustness"].values())
    assert crack["robustness_spread"]["max"] == pytest.approx(max(synonyms))
    assert crack["robustness_spread"]["min"] == pytest.approx(min(synonyms))
    assert crack["miou_at_best_threshold"] >= crack["sweep"]["0.5"] - 1e-9
    assert m["latency"]["ms_per_image_mean"] > 0
    assert m["overall"]["images"] == len(m["per_image"])
    ious = [r["iou"] for r in m["per_image"] if r["dataset"] == "cracks"]
    assert crack["miou"] == pytest.approx(float(np.mean(ious)))
    grid = Image.open(out / "best_worst.png")
    assert grid.width == 3 * 160 and grid.height > 160
    # crack sizes: each image's predicted and true measurements, and their errors per crack dataset
    sizes = [r["sizes"] for r in m["per_image"] if r["dataset"] == "cracks"]
    err = crack["measurement_error"]
    assert err["images"] == len(sizes) == crack["images"] and "measurement_error" not in m["datasets"]["drywall-join"]
    assert err["length_mae_px"] == pytest.approx(np.mean([abs(z["length_px"] - z["length_true_px"]) for z in sizes]))
    assert err["true_length_px_mean"] > 0  # the synthetic cracks are measured as lines
    assert "crack count MAE" in r.out
    from drywall_core.release.model_card import render_card

    card = render_card({"version": "v1", "metrics": {}}, m)
    assert "Crack measurements, predicted against ground truth" in card and f"{err['length_mae_px']:.1f}" in card


def test_predict_writes_binary_masks_at_original_size(cli, trained: Path, tmp_path: Path, synthetic_exports) -> None:
    src = sorted((synthetic_exports[0] / "train").glob("*.jpg"))[0]
    wide = tmp_path / "wide photo.jpg"
    Image.open(src).convert("RGB").resize((300, 170)).save(wide)
    out = tmp_path / "pred"
    r = cli("predict", wide, src, "--prompt", "segment crack", "--model", trained / "model", "--out", out)
    assert r.code == 0, r.err
    m = Image.open(out / "wide photo__segment_crack.png")
    assert m.mode == "L" and m.size == (300, 170)
    assert set(np.unique(np.asarray(m))) <= {0, 255}
    assert (out / output_name(src, "segment crack")).is_file()


def test_predict_skips_unreadable_images_and_exits_1(cli, trained: Path, tmp_path: Path, synthetic_exports) -> None:
    good = sorted((synthetic_exports[0] / "train").glob("*.jpg"))[:2]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(good[0].read_bytes()[:300])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    out = tmp_path / "pred"
    r = cli(
        "predict",
        good[0],
        bad,
        text,
        good[1],
        "--prompt",
        "segment taping area",
        "--model",
        trained / "model",
        "--out",
        out,
    )
    assert r.code == 1
    assert f"{bad}: cannot read image" in r.err and f"{text}: cannot read image" in r.err
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(output_name(g, "segment taping area") for g in good)


def test_batched_equals_single(trained: Path, synthetic_exports) -> None:
    from drywall_core.model.runtime import probabilities_for

    loaded = load_model(trained / "model")
    imgs = [Image.open(p).convert("RGB") for p in sorted((synthetic_exports[1] / "train").glob("*.jpg"))[:4]]
    batched = probabilities_for(loaded, imgs, "segment taping area")
    single = [probabilities_for(loaded, [im], "segment taping area")[0] for im in imgs]
    for a, b in zip(batched, single, strict=True):
        assert np.abs(a - b).max() < 1e-4


def test_parallel_images_encode_like_one_call(trained: Path, synthetic_exports, monkeypatch) -> None:
    """On a CPU, the runtime encodes a batch's images on parallel threads with single-threaded
    kernels: the same activations as one call, no autograd graph, torch's thread count restored."""
    import threading

    import torch

    from drywall_core.model import runtime as features
    from drywall_core.model.runtime import for_inference, parallel_images

    loaded = for_inference(load_model(trained / "model"), "fp32")
    imgs = [Image.open(p).convert("RGB") for p in sorted((synthetic_exports[1] / "train").glob("*.jpg"))[:5]]
    pv = features.pixel_values(loaded, imgs)
    seen: list[tuple[int, int, int]] = []
    encode = features._encode
    together = threading.Barrier(2, timeout=30)  # passes only if both chunks are being encoded at once

    def watched(model, chunk):
        seen.append((threading.get_ident(), torch.get_num_threads(), len(chunk)))
        together.wait()
        return encode(model, chunk)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert parallel_images(loaded), "a CPU model with 2 threads encodes images in parallel"
        one = features.encode_images(loaded.model, pv)
        monkeypatch.setattr(features, "_encode", watched)
        par = features.encode_images(loaded.model, pv, parallel=True)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert sorted(n for _, _, n in seen) == [2, 3] and {t for _, t, _ in seen} == {1}
    assert len({ident for ident, _, _ in seen}) == 2 and threading.get_ident() not in {i for i, _, _ in seen}
    assert par.shape == one.shape and not par.requires_grad
    assert torch.allclose(par, one, atol=1e-5)


def test_predict_on_real_photos(cli, trained: Path, cracks_export: Path, tmp_path: Path) -> None:
    photos = sorted((cracks_export / "valid").glob("*.jpg"))[:3]
    r = cli("predict", *photos, "--prompt", "segment crack", "--model", trained / "model", "--out", tmp_path)
    assert r.code == 0, r.err
    for p in photos:
        assert Image.open(tmp_path / output_name(p, "segment crack")).size == Image.open(p).size


def test_artifact_threshold_is_used(trained: Path) -> None:
    loaded = load_model(trained / "model")
    manifest = json.loads((trained / "model" / "manifest.json").read_text())
    assert loaded.threshold_for("segment crack") == manifest["metrics"]["thresholds"]["segment crack"]
    assert loaded.threshold_for("an unknown prompt") == 0.5


def test_registry_publish_judges_a_train_run_like_the_flow(cli, trained: Path, monkeypatch) -> None:
    """`drywall registry publish RUN_DIR`: same gate, champion judged on the run's own val images, audited."""
    from drywall_core.base.storage import LocalStore
    from drywall_core.release.registry import ModelRegistry

    monkeypatch.setenv("DRYWALL_GATE__MIN_MIOU", "0")
    monkeypatch.setenv("DRYWALL_GATE__MIN_DICE", "0")
    first = cli("registry", "publish", trained)
    assert first.code == 0, first.err
    assert "no champion yet" in first.out
    reg = ModelRegistry(LocalStore(Path(os.environ["DRYWALL_HOME"]) / "registry"), "clipseg-drywall")
    champion = reg.champion_version()
    assert champion and f"champion: {champion}" in first.out
    again = cli("registry", "publish", trained)  # the same model again: judged against itself
    assert again.code == 1 and "does not beat the champion" in again.out + again.err
    assert reg.champion_version() == champion and len(reg.versions()) == 2
    log = reg.audit_log()
    assert [e["action"] for e in log] == ["promote", "refuse"]
    assert log[1]["decision"]["champion_miou"] == pytest.approx(log[1]["decision"]["candidate_miou"])
    not_a_run = cli("registry", "publish", trained / "eval")
    assert not_a_run.code == 2 and "not a finished `drywall train` run" in not_a_run.err


def test_registry_publish_runs_the_shadow_and_emits_the_refusal(
    cli, trained: Path, synthetic_exports, tmp_path: Path, monkeypatch
) -> None:
    """As the retrain flow: the candidate and the champion are compared on the latest field photos
    before the gate decides, and a refusal is sent to the Prefect API as ``drywall.gate.refused``."""
    import shutil

    from tests.integration.alert_sink import Sink

    endpoint = Sink()  # stands in for Prefect's POST /api/events
    monkeypatch.setenv("PREFECT_API_URL", endpoint.url.split("/services/")[0] + "/api")
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:s3cret")
    monkeypatch.setenv("DRYWALL_GATE__MIN_MIOU", "0")
    monkeypatch.setenv("DRYWALL_GATE__MIN_DICE", "0")
    field = Path(os.environ["DRYWALL_HOME"]) / "field-images"
    field.mkdir(parents=True)
    for p in sorted((synthetic_exports[0] / "valid").glob("*.jpg"))[:3]:
        shutil.copyfile(p, field / p.name)
    assert cli("registry", "publish", trained).code == 0
    assert endpoint.events("drywall.gate.refused") == [], "a promotion is not a refusal"
    again = cli("registry", "publish", trained)
    assert again.code == 1
    (refused,) = endpoint.events("drywall.gate.refused")
    assert refused["resource"]["prefect.resource.id"] == "drywall.model.clipseg-drywall"
    assert refused["resource"]["drywall.regression"] == "false"
    assert any("does not beat the champion" in r for r in refused["payload"]["reasons"])
    assert endpoint.requests[0][1].startswith("Basic "), "the server's basic auth is sent"
    from drywall_core.stages.context import model_registry

    decision = model_registry().audit_log()[-1]["decision"]
    assert decision["shadow"]["images"] == 3, "the shadow comparison ran on the field photos"
    assert decision["shadow"]["prompts"]["segment crack"]["agreement"] == pytest.approx(1.0), "same model, same masks"


def test_registry_publish_refuses_edited_metrics(cli, trained: Path, tmp_path: Path, monkeypatch) -> None:
    """A run's eval/metrics.json is a claim: the gate measures the model itself and refuses a lie by name."""
    import shutil

    from drywall_core.base.storage import LocalStore
    from drywall_core.release.registry import ModelRegistry

    monkeypatch.setenv("DRYWALL_GATE__MIN_MIOU", "0")
    monkeypatch.setenv("DRYWALL_GATE__MIN_DICE", "0")
    forged = tmp_path / "forged-run"
    shutil.copytree(trained, forged)
    metrics = json.loads((forged / "eval" / "metrics.json").read_text())
    for d in metrics["datasets"].values():
        d["miou"], d["mean_dice"] = 0.91, 0.93
    (forged / "eval" / "metrics.json").write_text(json.dumps(metrics))
    r = cli("registry", "publish", forged)
    assert r.code == 1, r.out + r.err
    assert "the run claims mIoU 0.910, the gate measured" in r.out + r.err and "claimed metrics refused" in r.out
    reg = ModelRegistry(LocalStore(Path(os.environ["DRYWALL_HOME"]) / "registry"), "clipseg-drywall")
    assert reg.champion_version() is None, "never promoted on a forged claim"
    (refusal,) = reg.audit_log()
    assert refusal["action"] == "refuse" and any("claimed metrics refused" in x for x in refusal["decision"]["reasons"])


def test_train_shows_progress_for_every_stage(tiny_model_dir: Path, synthetic_exports, tmp_path: Path) -> None:
    """In a terminal, `drywall train` shows each stage: masks, split, activation cache, epochs, evaluation."""
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal has a size
    cmd = [str(Path(sys.executable).parent / "drywall"), "train", "--model", str(tiny_model_dir)]
    cmd += ["--out", str(tmp_path / "run"), "--epochs", "1", "--export", str(synthetic_exports[0])]
    env = {**os.environ, "DRYWALL_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen(cmd, stdin=follower, stdout=follower, stderr=follower, env=env, close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed: the command is done
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    screen = b"".join(chunks).decode(errors="replace")
    for stage in ("masks:", "split ", "activation cache:", "epoch 1/1:", "evaluate:", "drift features:"):
        assert stage in screen, f"no progress for {stage!r}"


def test_int8_inference_agrees_with_fp32_and_is_selectable(cli, trained: Path, synthetic_exports, tmp_path) -> None:
    """The default CPU path quantizes the vision tower only; fp32 stays one option away."""
    from drywall_core.base.errors import InputError
    from drywall_core.model.runtime import for_inference, probabilities_for
    from drywall_core.model.train import train

    fp32 = load_model(trained / "model")
    int8 = for_inference(load_model(trained / "model"), "int8")
    linears = [m for m in int8.model.clip.vision_model.modules() if "Linear" in type(m).__name__]
    assert linears and all("quantized" in type(m).__module__ for m in linears), "every vision linear is int8"
    assert not any("quantized" in type(m).__module__ for m in int8.model.decoder.modules()), "the decoder stays fp32"
    imgs = [Image.open(p).convert("RGB") for p in sorted((synthetic_exports[0] / "train").glob("*.jpg"))[:6]]
    ious = []
    for a, b in zip(
        probabilities_for(fp32, imgs, "segment crack"), probabilities_for(int8, imgs, "segment crack"), strict=True
    ):
        pa, pb = a >= 0.5, b >= 0.5
        ious.append(1.0 if not (pa | pb).any() else (pa & pb).sum() / (pa | pb).sum())
    assert np.mean(ious) >= 0.9, ious
    with pytest.raises(InputError, match="cannot train a int8 model"):
        train(int8, [], {}, None, tmp_path / "run", tmp_path / "cache")  # type: ignore[arg-type]

    src = sorted((synthetic_exports[0] / "train").glob("*.jpg"))[0]
    args = ("predict", src, "--prompt", "segment crack", "--model", trained / "model")
    assert cli(*args, "--out", tmp_path / "f", "--precision", "fp32").code == 0
    expected = (
        probabilities_for(fp32, [Image.open(src).convert("RGB")], "segment crack")[0]
        >= fp32.threshold_for("segment crack")
    ) * 255
    assert np.array_equal(np.asarray(Image.open(tmp_path / "f" / output_name(src, "segment crack"))), expected)
    bad = cli(*args, "--out", tmp_path / "g", "--precision", "int4")
    assert bad.code == 2 and "precision must be one of fp32, int8" in bad.err
