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


def test_field_predictions_store_the_embeddings_of_the_same_encode(tiny, cracks_export: Path, tmp_path, monkeypatch):
    """A photo predicted is not encoded again for drift or the label queue: its embedding comes from
    the prediction's own encode, equal to image_embeddings', and the masks are unchanged."""
    import drywall_core.model.runtime as runtime
    from drywall_core.data.images import open_rgb
    from drywall_core.field import predictions as fp
    from drywall_core.field.drift import IMAGE_EXTENSIONS

    photos = [open_rgb(p) for p in sorted((cracks_export / "valid").glob("*.jpg"))[:3]]
    maps, vectors = runtime.probabilities_and_embeddings(tiny, photos, ["segment crack", "segment taping area"])
    plain = runtime.probabilities(tiny, photos, ["segment crack", "segment taping area"])
    assert all(np.allclose(a[p], b[p], atol=1e-5) for a, b in zip(maps, plain, strict=True) for p in a)
    assert np.allclose(vectors, image_embeddings(tiny, photos), atol=1e-4)

    folder = tmp_path / "field"
    folder.mkdir()
    for p in sorted((cracks_export / "valid").glob("*.jpg"))[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    images = fp.field_images(folder, IMAGE_EXTENSIONS)
    store = EmbeddingStore(tmp_path / "emb", tiny)
    fp.predict_field(tiny, images, ["segment crack"], tmp_path / "out", "v1", progress=False, embeddings=store)
    monkeypatch.setattr(runtime, "image_embeddings", lambda *a, **k: pytest.fail("encoded again"))
    stored = store.embed([im.path for im in images], [im.sha256 for im in images])
    assert np.allclose(stored, vectors, atol=1e-4), "the same photos, in the same order"
