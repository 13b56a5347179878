"""The frozen-activation cache reproduces the full model, invalidates on any key change, resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps

from drywall_core.model.cache import ActivationCache, CacheItem, image_key
from drywall_core.model.load import load_model
from drywall_core.model.runtime import decode, encode_images, text_embeddings
from drywall_core.model.tiny import init_tiny


def _images(samples, n=6) -> list[Path]:
    return [s.image for s in samples[0][:n]]


def _full_logits(loaded, paths, prompt="segment crack", flip=False):
    imgs = [Image.open(p).convert("RGB") for p in paths]
    if flip:
        imgs = [ImageOps.mirror(i) for i in imgs]
    inputs = loaded.processor(text=[prompt] * len(imgs), images=imgs, padding=True, return_tensors="pt")
    cond = text_embeddings(loaded, [prompt]).expand(len(imgs), -1)
    with torch.no_grad():
        out = loaded.model(pixel_values=inputs["pixel_values"], conditional_embeddings=cond)
    return out.logits, cond


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_cache_reproduces_full_model_logits(tiny_model_dir, synthetic_samples, tmp_path, dtype) -> None:
    loaded = load_model(tiny_model_dir)
    paths = _images(synthetic_samples)
    full, cond = _full_logits(loaded, paths)
    cache = ActivationCache(tmp_path, loaded, dtype)
    cache.build([CacheItem(p) for p in paths], batch_size=4, progress=False)
    with torch.no_grad():
        cached = decode(loaded.model, cache.get([image_key(p) for p in paths]), cond)
    diff = (cached - full).abs().max().item()
    if dtype == "float32":
        assert diff <= 1e-5
    elif dtype == "float16":  # stated tolerance: fp16 storage keeps logits within 1e-3 of their range
        assert diff <= 1e-3 * full.abs().max().item()
    else:  # stated tolerance: int8 per-token storage keeps logits within 1% of their range
        assert diff <= 1e-2 * full.abs().max().item()
        agree = ((cached >= 0) == (full >= 0)).float().mean().item()
        assert agree >= 0.995, f"only {agree:.4f} of the pixels keep their side of the threshold"


def test_int8_cache_is_half_of_fp16(tiny_model_dir, synthetic_samples, tmp_path) -> None:
    loaded = load_model(tiny_model_dir)
    items = [CacheItem(p) for p in _images(synthetic_samples, 8)]
    sizes = {}
    for dtype in ("float16", "int8"):
        cache = ActivationCache(tmp_path / dtype, loaded, dtype)
        cache.build(items, batch_size=8, progress=False)
        sizes[dtype] = cache.bytes_per_view()
    width = cache.index["shape"][-1]  # D bytes of int8 + one fp16 scale per token, vs 2 D bytes of fp16
    assert sizes["int8"] / sizes["float16"] == pytest.approx((width + 2) / (2 * width), rel=0.02), sizes


def test_shared_cache_moves_int8_entries_exactly(tiny_model_dir, synthetic_samples, tmp_path) -> None:
    from drywall_core.base.storage import LocalStore
    from drywall_core.model.cache import SharedCache

    loaded = load_model(tiny_model_dir)
    items = [CacheItem(p) for p in _images(synthetic_samples, 6)]
    keys = [it.key for it in items]
    store = LocalStore(tmp_path / "store")
    first = ActivationCache(tmp_path / "host-a", loaded, "int8")
    assert SharedCache(first, store).build(items[:4], progress=False)["uploaded"] == 4
    second = ActivationCache(tmp_path / "host-b", loaded, "int8")
    stats = SharedCache(second, store).build(items, progress=False)
    assert (stats["downloaded"], stats["encoded"], stats["uploaded"]) == (4, 2, 2)
    assert torch.equal(first.get(keys[:4]), second.get(keys[:4])), "downloaded entries are the encoded bytes"


def test_cache_matches_text_prompted_forward(tiny_model_dir, synthetic_samples, tmp_path) -> None:
    """Against the model's own text path (batched text tower): equal up to float rounding."""
    loaded = load_model(tiny_model_dir)
    paths = _images(synthetic_samples)
    imgs = [Image.open(p).convert("RGB") for p in paths]
    inputs = loaded.processor(text=["segment taping area"] * len(imgs), images=imgs, padding=True, return_tensors="pt")
    with torch.no_grad():
        full = loaded.model(**inputs).logits
    cache = ActivationCache(tmp_path, loaded, "float32")
    cache.build([CacheItem(p) for p in paths], progress=False)
    cond = text_embeddings(loaded, ["segment taping area"]).expand(len(paths), -1)
    with torch.no_grad():
        cached = decode(loaded.model, cache.get([image_key(p) for p in paths]), cond)
    assert torch.allclose(cached, full, rtol=1e-5, atol=1e-6 * full.abs().max().item() * 10)


def test_flipped_view_is_the_mirrored_image(tiny_model_dir, synthetic_samples, tmp_path) -> None:
    loaded = load_model(tiny_model_dir)
    paths = _images(synthetic_samples, 3)
    full, cond = _full_logits(loaded, paths, flip=True)
    cache = ActivationCache(tmp_path, loaded, "float32")
    cache.build([CacheItem(p, flip=True) for p in paths], progress=False)
    with torch.no_grad():
        cached = decode(loaded.model, cache.get([image_key(p, True) for p in paths]), cond)
    assert (cached - full).abs().max().item() <= 1e-5
    assert image_key(paths[0], True) != image_key(paths[0])


def test_cache_hits_and_invalidation(tiny_model_dir, synthetic_samples, tmp_path) -> None:
    loaded = load_model(tiny_model_dir)
    paths = [shutil.copy(p, tmp_path / p.name) for p in _images(synthetic_samples, 4)]
    paths = [Path(p) for p in paths]
    items = [CacheItem(p) for p in paths]
    root = tmp_path / "cache"
    assert ActivationCache(root, loaded).build(items, progress=False) == {"encoded": 4, "cached": 0}
    assert ActivationCache(root, loaded).build(items, progress=False) == {"encoded": 0, "cached": 4}
    # image content changed -> miss for that image only
    Image.open(paths[0]).convert("RGB").rotate(90).save(paths[0])
    assert ActivationCache(root, loaded).build(items, progress=False)["encoded"] == 1
    # another base model (revision/config) -> a different cache
    other = load_model(init_tiny(tmp_path / "other", seed=3))
    assert ActivationCache(root, other).dir != ActivationCache(root, loaded).dir
    assert ActivationCache(root, other).build(items, progress=False)["encoded"] == 4
    # another input size -> a different cache
    loaded.processor.image_processor.size = {"height": 96, "width": 96}
    assert ActivationCache(root, loaded).build(items, progress=False)["encoded"] == 4
    # dtype is part of the key too
    loaded.processor.image_processor.size = {"height": 128, "width": 128}
    assert ActivationCache(root, loaded, "float32").build(items, progress=False)["encoded"] == 4


def test_interrupted_build_resumes(tiny_model_dir, synthetic_samples, tmp_path) -> None:
    loaded = load_model(tiny_model_dir)
    paths = _images(synthetic_samples, 10)
    items = [CacheItem(p) for p in paths]

    def crash(batch: int) -> None:
        if batch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ActivationCache(tmp_path, loaded, "float32").build(items, batch_size=3, progress=False, on_batch=crash)
    cache = ActivationCache(tmp_path, loaded, "float32")
    assert len(json.loads((cache.dir / "index.json").read_text())["entries"]) == 6
    assert cache.build(items, batch_size=3, progress=False) == {"encoded": 4, "cached": 6}
    fresh = ActivationCache(tmp_path / "fresh", loaded, "float32")
    fresh.build(items, batch_size=5, progress=False)
    keys = [image_key(p) for p in paths]
    assert torch.equal(cache.get(keys), fresh.get(keys))


def test_encoder_skips_unused_layers(tiny_model_dir, synthetic_samples) -> None:
    """Only layers up to the last extract layer run; the model is restored afterwards."""
    loaded = load_model(tiny_model_dir)
    layers = loaded.model.clip.vision_model.encoder.layers
    n = len(layers)
    calls = []
    hooks = [layer.register_forward_hook(lambda *_a, i=i: calls.append(i)) for i, layer in enumerate(layers)]
    img = Image.open(_images(synthetic_samples, 1)[0]).convert("RGB")
    with torch.no_grad():
        encode_images(loaded.model, loaded.processor.image_processor([img], return_tensors="pt")["pixel_values"])
    for h in hooks:
        h.remove()
    assert calls == list(range(max(loaded.model.config.extract_layers) + 1))
    assert len(loaded.model.clip.vision_model.encoder.layers) == n
