"""The prediction service's parts without HTTP: keys, rate limits, the per-image forward pass the
batcher uses, mask encodings, and warm-up checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drywall_core.base.errors import InputError
from drywall_core.serve.keys import KeyRing, RateLimiter, add_key, hash_key


def test_key_file_is_hashed_lines_and_a_bad_line_is_named(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    add_key(keys, "alpha")
    keys.write_text(f"# ops team\n\n{keys.read_text()}  {hash_key('beta').upper().replace('SHA256', 'sha256')}  \n")
    ring = KeyRing.from_file(keys)
    assert ring.identify("Bearer alpha") == hash_key("alpha")[7:19]
    assert ring.identify("bearer beta") == hash_key("beta")[7:19]
    for bad in (None, "", "Bearer", "Bearer gamma", "Basic alpha", "alpha"):
        assert ring.identify(bad) is None, bad
    keys.write_text(f"{hash_key('a')}\nsha256:abc\n")
    with pytest.raises(InputError, match=r"keys.txt:2: not a 'sha256:<64 hex digits>' line"):
        KeyRing.from_file(keys)
    keys.write_text("# nothing\n")
    with pytest.raises(InputError, match="no API key in the file"):
        KeyRing.from_file(keys)
    with pytest.raises(InputError, match="cannot read the API key file"):
        KeyRing.from_file(tmp_path / "missing.txt")


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(per_min=60, burst=2)
    assert [limiter.take("k", now=0.0) for _ in range(2)] == [0.0, 0.0]
    wait = limiter.take("k", now=0.0)
    assert wait == pytest.approx(1.0)
    assert limiter.take("other", now=0.0) == 0.0, "each caller has its own bucket"
    assert limiter.take("k", now=1.01) == 0.0 and limiter.take("k", now=1.02) > 0


def test_probabilities_each_is_the_forward_pass_per_image(tiny_model_dir: Path) -> None:
    """A batch of photos with different prompts answers each as the plain call answers it alone."""
    from drywall_core.model.runtime import load_for_inference, probabilities, probabilities_each

    loaded = load_for_inference(tiny_model_dir, "fp32")
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 64), (50, 30), (32, 32))
    ]
    asks = [["segment crack"], ["segment taping area", "segment crack"], ["segment taping area"]]
    together = probabilities_each(loaded, images, asks)
    for im, ps, got in zip(images, asks, together, strict=True):
        alone = probabilities(loaded, [im], ps)[0]
        assert list(got) == ps
        for p in ps:
            assert got[p].shape == (im.size[1], im.size[0])
            np.testing.assert_allclose(got[p], alone[p], atol=1e-5)
    with pytest.raises(InputError, match="no prompt given"):
        probabilities_each(loaded, images[:1], [[]])


def test_mask_encodings_round_trip() -> None:
    from drywall_core.data.masks import decode_rle, encode_rle
    from drywall_core.field.predictions import mask_stats
    from drywall_core.serve.answers import polygons

    mask = np.zeros((20, 30), bool)
    mask[5:10, 4:12] = True
    rle = encode_rle(mask)
    assert rle["size"] == [20, 30] and isinstance(rle["counts"], str)
    assert np.array_equal(decode_rle(rle).astype(bool), mask)
    (ring,) = polygons(mask)
    xs, ys = ring[0::2], ring[1::2]
    assert (min(xs), max(xs), min(ys), max(ys)) == (4.0, 12.0, 5.0, 10.0)  # pixel edges, as COCO draws them
    prob = np.where(mask, 0.9, 0.2).astype(np.float32)
    stats = mask_stats(prob, 0.5, entropy=False)
    assert stats["fg_fraction"] == pytest.approx(40 / 600)
    assert stats["mean_confidence"] == pytest.approx((40 * 0.9 + 560 * 0.8) / 600)
    assert stats["uncertain_share"] == 0.0


def test_check_prompts_names_each_limit() -> None:
    from drywall_core.base.config import ServeConfig
    from drywall_core.serve.answers import Refused
    from drywall_core.serve.app import check_prompts

    cfg = ServeConfig(max_prompts=2, max_prompt_chars=10)
    assert check_prompts(["segment  crack", "segment crack"], cfg.model_copy(update={"max_prompt_chars": 20})) == [
        "segment crack"
    ]
    for prompts, message in ((["a", "b", "c"], "3 given, at most 2"), (["x" * 11], "11 characters"), ([""], "empty")):
        with pytest.raises(Refused, match=message) as err:
            check_prompts(prompts, cfg)
        assert err.value.status == 422


def test_inference_device_is_the_cpu_here_and_a_missing_gpu_is_named() -> None:
    import torch

    from drywall_core.model.runtime import inference_device

    assert inference_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert inference_device("auto").type == "cpu"
        with pytest.raises(InputError, match="no CUDA device is visible"):
            inference_device("cuda")
    with pytest.raises(InputError, match="one of auto, cpu, cuda"):
        inference_device("tpu")
