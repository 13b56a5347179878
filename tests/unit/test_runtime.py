"""The one forward pass (``drywall_core.model.runtime.probabilities``): what every caller relies on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drywall_core.base.errors import InputError
from drywall_core.model.load import load_model
from drywall_core.model.runtime import probabilities, probabilities_for


@pytest.fixture(scope="module")
def images(synthetic_exports) -> list[Image.Image]:
    paths = sorted((synthetic_exports[0] / "train").glob("*.jpg"))[:5]
    return [Image.open(p).convert("RGB").resize((96 + 8 * i, 80)) for i, p in enumerate(paths)]


def test_each_image_is_encoded_once_for_all_prompts(tiny_model_dir: Path, images, monkeypatch) -> None:
    """Two prompts cost one backbone pass per batch, and give each prompt's single-prompt maps."""
    from drywall_core.model import runtime

    loaded = load_model(tiny_model_dir)
    calls = []
    real = runtime.encode_images

    def counting(model, pixel_values, parallel=False):
        calls.append(len(pixel_values))
        return real(model, pixel_values, parallel)

    monkeypatch.setattr(runtime, "encode_images", counting)
    maps = probabilities(loaded, images, ["segment crack", "segment taping area"], batch_size=2)
    assert calls == [2, 2, 1], "batches of at most batch_size, each image once"
    assert [m["segment crack"].shape for m in maps] == [im.size[::-1] for im in images], "each image's own size"
    alone = probabilities_for(loaded, images, "segment taping area")
    for m, a in zip(maps, alone, strict=True):
        assert np.abs(m["segment taping area"] - a).max() < 1e-5
        assert m["segment crack"].min() >= 0.0 and m["segment crack"].max() <= 1.0


def test_prompts_are_checked_before_any_image_is_encoded(tiny_model_dir: Path, images, monkeypatch) -> None:
    from drywall_core.model import runtime

    loaded = load_model(tiny_model_dir)
    monkeypatch.setattr(runtime, "encode_images", lambda *a, **k: pytest.fail("encoded before the prompt check"))
    with pytest.raises(InputError, match="no prompt given"):
        probabilities(loaded, images, [])
    with pytest.raises(InputError, match="tokens; the model takes at most"):
        probabilities(loaded, images, ["crack " * 400])


def test_text_embeddings_are_computed_once_per_prompt(tiny_model_dir: Path, images, monkeypatch) -> None:
    from drywall_core.model import runtime

    loaded = load_model(tiny_model_dir)
    seen: list[list[str]] = []
    real = runtime.text_embeddings
    monkeypatch.setattr(runtime, "text_embeddings", lambda lm, ps: seen.append(list(ps)) or real(lm, ps))
    probabilities(loaded, images[:2], ["segment crack"])
    probabilities(loaded, images[2:], ["segment crack", "segment taping area", "segment crack"])
    assert seen == [["segment crack"], ["segment taping area"]], "memoized per prompt; duplicates count once"
