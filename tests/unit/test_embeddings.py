"""Image embeddings: the vision tower's pooled output, stored by photo content, computed once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drywall_core.base.fsutil import sha256_file
from drywall_core.model.embeddings import EmbeddingStore
from drywall_core.model.load import load_model
from drywall_core.model.runtime import for_inference, image_embeddings


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    return for_inference(load_model(tiny_model_dir), "fp32")


def test_embeddings_are_the_pooled_output_and_do_not_depend_on_the_batch(tiny, cracks_export: Path) -> None:
    from drywall_core.data.images import open_rgb

    photos = [open_rgb(p) for p in sorted((cracks_export / "valid").glob("*.jpg"))[:5]]
    together = image_embeddings(tiny, photos, batch_size=5)
    alone = np.concatenate([image_embeddings(tiny, [p]) for p in photos])
    assert together.shape == (5, tiny.model.config.vision_config.hidden_size) and together.dtype == np.float32
    assert np.allclose(together, alone, atol=1e-4)
    pv = tiny.processor.image_processor(photos[:1], return_tensors="pt")["pixel_values"]
    import torch

    with torch.no_grad():
        hf = tiny.model.clip.vision_model(pixel_values=pv, interpolate_pos_encoding=True).pooler_output
    assert np.allclose(together[0], hf[0].numpy(), atol=1e-5)
    assert image_embeddings(tiny, []).shape == (0, together.shape[1])


def test_the_store_embeds_each_photo_once_and_only_names_digests(
    tiny, cracks_export: Path, tmp_path: Path, monkeypatch
):
    import drywall_core.model.runtime as runtime

    paths = sorted((cracks_export / "valid").glob("*.jpg"))[:4]
    shas = [sha256_file(p) for p in paths]
    store = EmbeddingStore(tmp_path / "emb", tiny)
    first = store.embed(paths, shas)
    encoded: list[int] = []
    real = runtime.image_embeddings
    monkeypatch.setattr(runtime, "image_embeddings", lambda m, ims, b=8: encoded.append(len(ims)) or real(m, ims, b))
    again = store.embed(paths[:2] + [paths[3]], [shas[0], shas[1], shas[3]])
    assert encoded == [] and np.array_equal(again, first[[0, 1, 3]]), "stored photos are read, not encoded"
    assert store.root.name == f"{tiny.fingerprint}-fp32", "one store per backbone and precision"
    store.path(shas[2]).write_bytes(b"torn")  # a crash mid-write elsewhere: computed again, not trusted
    store.embed(paths[2:3], shas[2:3])
    assert encoded == [1] and np.allclose(store.get(shas[2]), first[2])
    for bad in ("../../etc/passwd", "a" * 63, "G" * 64):
        with pytest.raises(ValueError, match="not a sha256"):
            store.path(bad)
    assert not list(store.root.rglob(".emb-*")), "no temporary file left"
