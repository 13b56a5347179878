"""The CUDA path: bf16-autocast training and GPU inference. Runs where a GPU is present (a GPU
worker, the `device` machines), skips with a reason on the CPU-only CI machines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drywall_core.base.config import TrainConfig
from drywall_core.model.load import load_model

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here: the CUDA/bf16 path runs on a GPU host"
)


def test_training_on_cuda_learns_and_says_where(tiny_model_dir, synthetic_samples, tmp_path: Path) -> None:
    from drywall_core.model.train import train

    samples, specs = synthetic_samples
    loaded = load_model(tiny_model_dir)
    cfg = TrainConfig(batch_size=8, lr=3e-3, patience=50, cache_dtype="float32", epochs=4)
    result = train(loaded, samples, specs, cfg, tmp_path / "run", tmp_path / "cache", progress=False)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["device"] == "cuda" and summary["device_name"] == torch.cuda.get_device_name(0)
    losses = [h["train_loss"] for h in result.history]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    assert next(loaded.model.decoder.parameters()).dtype == torch.float32, "bf16 is autocast, weights stay fp32"


def test_inference_on_cuda_matches_the_cpu(tiny_model_dir, synthetic_exports) -> None:
    from drywall_core.model.runtime import for_inference, parallel_images, probabilities_for

    cpu = for_inference(load_model(tiny_model_dir), "fp32")
    gpu = load_model(tiny_model_dir)
    gpu.model.to("cuda")
    gpu = for_inference(gpu, "int8")
    assert gpu.precision == "fp32" and not parallel_images(gpu), "int8 and parallel images are CPU-only"
    imgs = [Image.open(p).convert("RGB") for p in sorted((synthetic_exports[0] / "train").glob("*.jpg"))[:6]]
    for a, b in zip(
        probabilities_for(cpu, imgs, "segment crack"), probabilities_for(gpu, imgs, "segment crack"), strict=True
    ):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-3


def test_prediction_loads_onto_the_gpu_by_default(tiny_model_dir, synthetic_exports) -> None:
    """What every stage and the prediction service load (``load_for_inference``, device ``auto``) runs on
    the GPU where there is one, in fp32 (int8 is a CPU kernel), and answers like the CPU."""
    from drywall_core.model.runtime import device_of, load_for_inference, probabilities_for

    gpu = load_for_inference(tiny_model_dir, "int8")
    cpu = load_for_inference(tiny_model_dir, "fp32", device="cpu")
    assert device_of(gpu).type == "cuda" and gpu.precision == "fp32" and device_of(cpu).type == "cpu"
    imgs = [Image.open(p).convert("RGB") for p in sorted((synthetic_exports[0] / "train").glob("*.jpg"))[:4]]
    for a, b in zip(probabilities_for(cpu, imgs, "segment crack"), probabilities_for(gpu, imgs, "segment crack"),
                    strict=True):  # fmt: skip
        assert np.abs(a - b).max() < 1e-3
