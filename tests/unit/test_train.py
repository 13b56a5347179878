"""Decoder training on the cache: exact resume, determinism, early stopping, outputs, losses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from drywall_core.base.config import TrainConfig
from drywall_core.model.load import load_model
from drywall_core.model.losses import mixed_loss
from drywall_core.model.train import train

FAST = dict(batch_size=8, lr=3e-3, patience=50, cache_dtype="float32")


def _train(
    tiny_model_dir, synthetic_samples, out: Path, cache: Path, epochs: int, resume=False, on_epoch_end=None, **kw
):
    samples, specs = synthetic_samples
    loaded = load_model(tiny_model_dir)
    cfg = TrainConfig(**{**FAST, "epochs": epochs, **kw})
    result = train(loaded, samples, specs, cfg, out, cache, resume=resume, progress=False, on_epoch_end=on_epoch_end)
    return loaded, result


def _decoder(loaded) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in loaded.model.decoder.state_dict().items()}


def test_resume_after_interruption_matches_uninterrupted(tiny_model_dir, synthetic_samples, tmp_path) -> None:
    cache = tmp_path / "cache"
    ref_model, ref = _train(tiny_model_dir, synthetic_samples, tmp_path / "ref", cache, epochs=3)

    def stop_after_first(row: dict) -> None:
        if row["epoch"] == 1:
            raise KeyboardInterrupt("pre-empted")

    with pytest.raises(KeyboardInterrupt):
        _train(tiny_model_dir, synthetic_samples, tmp_path / "run", cache, epochs=3, on_epoch_end=stop_after_first)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    model, resumed = _train(tiny_model_dir, synthetic_samples, tmp_path / "run", cache, epochs=3, resume=True)
    assert resumed.epochs_run == 3
    for (name, a), b in zip(_decoder(ref_model).items(), _decoder(model).values(), strict=True):
        assert torch.equal(a, b), f"{name} differs after resume"
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in ref.history]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_seeded_runs_are_identical(tiny_model_dir, synthetic_samples, tmp_path) -> None:
    a, _ = _train(tiny_model_dir, synthetic_samples, tmp_path / "a", tmp_path / "cache", epochs=2)
    b, _ = _train(tiny_model_dir, synthetic_samples, tmp_path / "b", tmp_path / "cache", epochs=2)
    c, _ = _train(tiny_model_dir, synthetic_samples, tmp_path / "c", tmp_path / "cache", epochs=2, seed=1)
    da, db, dc = _decoder(a), _decoder(b), _decoder(c)
    assert all(torch.equal(da[k], db[k]) for k in da)
    assert not all(torch.equal(da[k], dc[k]) for k in da)


def test_training_learns_and_writes_outputs(tiny_model_dir, synthetic_samples, tmp_path) -> None:
    loaded, result = _train(tiny_model_dir, synthetic_samples, tmp_path / "run", tmp_path / "cache", epochs=12)
    hist = result.history
    assert hist[-1]["train_loss"] < 0.7 * hist[0]["train_loss"]
    assert result.best_val_miou == max(h["val_miou"] for h in hist)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(1, 13))
    assert {"train_loss", "val_loss", "val_miou", "val_miou_per_dataset", "lr"} <= set(lines[0])
    assert (tmp_path / "run" / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["cache"]["encoded"] + summary["cache"]["cached"] > 0
    # best epoch's weights are the ones left in the model
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert all(torch.equal(ck["best_state"][k], v) for k, v in loaded.model.decoder.state_dict().items())
    assert result.best_epoch == 1 + max(range(len(hist)), key=lambda i: hist[i]["val_miou"])
    same_as_last = all(torch.equal(ck["best_state"][k], ck["decoder"][k]) for k in ck["decoder"])
    assert same_as_last == (result.best_epoch == result.epochs_run), "best weights are a copy, not the live ones"


def test_early_stopping(tiny_model_dir, synthetic_samples, tmp_path) -> None:
    _, result = _train(
        tiny_model_dir, synthetic_samples, tmp_path / "run", tmp_path / "cache", epochs=10, lr=1e-12, patience=2
    )
    assert result.stopped_early and result.epochs_run == 3


def test_mixed_loss_by_hand() -> None:
    logits = torch.zeros(2, 2, 2)
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]])
    bce = torch.log(torch.tensor(2.0))  # BCE of logit 0 for either label
    # strong sample: BCE + soft Dice (p = 0.5 everywhere: inter 0.5, sums 2 + 1, eps 1)
    dice_strong = 1 - (2 * 0.5 + 1) / (2 + 1 + 1)
    loss = mixed_loss(logits, target, torch.tensor([True, False]), weak_weight=0.5)
    assert loss.item() == pytest.approx(((bce + dice_strong) + 0.5 * bce).item() / 2, rel=1e-6)
    only_weak = mixed_loss(logits, target, torch.tensor([False, False]), weak_weight=0.25)
    assert only_weak.item() == pytest.approx(0.25 * bce.item(), rel=1e-6)


def test_resume_refuses_a_checkpoint_of_another_configuration(tiny_model_dir, synthetic_samples, tmp_path) -> None:
    from drywall_core.base.errors import InputError

    run, cache = tmp_path / "run", tmp_path / "cache"
    _train(tiny_model_dir, synthetic_samples, run, cache, epochs=1)
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(InputError, match="checkpoint is for another model or configuration") as err:
        _train(tiny_model_dir, synthetic_samples, run, cache, epochs=1, lr=1e-5, resume=True)
    assert str(run / "checkpoint.pt") in str(err.value)
    assert (run / "checkpoint.pt").read_bytes() == before, "the refused resume leaves the checkpoint alone"


def test_named_profile_sits_between_settings_and_explicit_overrides() -> None:
    from drywall_core.base.config import TRAIN_PROFILES, resolve_train_config

    base = TrainConfig(epochs=7, weight_decay=0.3)
    demo = resolve_train_config(base, "tiny-demo")
    assert demo.lr == TRAIN_PROFILES["tiny-demo"]["lr"] and demo.epochs == TRAIN_PROFILES["tiny-demo"]["epochs"]
    assert demo.weight_decay == 0.3, "what the profile does not name comes from settings"
    assert resolve_train_config(base, "tiny-demo", {"epochs": 3}).epochs == 3, "explicit overrides win"
    assert resolve_train_config(base) == base, "no profile: the settings' (production) recipe"


@pytest.mark.slow  # ~80 s: `make test` runs it, `make unit` (the inner loop) leaves it out
def test_int8_cache_trains_as_well_as_fp16_on_the_real_exports(
    tiny_model_dir, cracks_export: Path, drywall_export: Path, tmp_path
) -> None:
    """The evidence behind int8 being the default cache: same recipe, same data, same validation mIoU."""
    import numpy as np
    from PIL import Image

    from drywall_core.base.config import Settings
    from drywall_core.data.samples import collect_samples

    samples, specs = collect_samples([cracks_export, drywall_export], Settings(home=tmp_path / "home"))
    # what predicting nothing scores (an empty truth and an empty prediction count as IoU 1)
    empty: dict[str, list[float]] = {}
    for x in samples:
        if x.side == "val":
            empty.setdefault(x.dataset, []).append(float(np.asarray(Image.open(x.mask)).max() == 0))
    nothing = float(np.mean([np.mean(v) for v in empty.values()]))
    best = {}
    for dtype in ("float16", "int8"):
        cfg = TrainConfig(epochs=4, batch_size=8, lr=3e-3, pos_weight=5.0, patience=10, flip=False, cache_dtype=dtype)
        result = train(
            load_model(tiny_model_dir), samples, specs, cfg, tmp_path / dtype, tmp_path / "cache", progress=False
        )
        best[dtype] = result.best_val_miou
    assert min(best.values()) > nothing + 0.02, f"the recipe learns beyond predicting nothing ({nothing:.3f}): {best}"
    assert abs(best["int8"] - best["float16"]) <= 0.01, best
