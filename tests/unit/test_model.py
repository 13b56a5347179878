"""CLIPSeg loading, the tiny model, backbone freezing, and the decoder-only artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from drywall_core.base.errors import CheckFailed
from drywall_core.model.load import DECODER_FILE, load_model, save_decoder
from drywall_core.model.losses import mixed_loss
from drywall_core.model.runtime import decode, encode_images, pixel_values, text_embeddings
from drywall_core.model.tiny import init_tiny


def test_init_tiny_cli_writes_a_loadable_model(cli, tmp_path: Path) -> None:
    r = cli("model", "init-tiny", tmp_path / "tiny")
    assert r.code == 0, r.err
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "tiny").iterdir()}
    loaded = load_model(tmp_path / "tiny")
    assert loaded.model.__class__.__name__ == "CLIPSegForImageSegmentation"
    assert loaded.revision.startswith("sha256:")
    r = cli("model", "info", tmp_path / "tiny")
    assert r.code == 0 and "decoder" in r.out


def test_tiny_vocabulary_tells_prompts_apart(tiny_model_dir: Path) -> None:
    loaded = load_model(tiny_model_dir)
    tok = loaded.processor.tokenizer
    ids = {p: tuple(tok(p)["input_ids"]) for p in ["segment crack", "segment taping area", "find the drywall seam"]}
    assert len(set(ids.values())) == 3
    unk = tok.convert_tokens_to_ids(tok.unk_token)
    assert all(unk not in v[1:-1] for v in ids.values()), "prompt words are in the vocabulary"
    emb = text_embeddings(loaded, list(ids))
    assert not torch.allclose(emb[0], emb[1])


def test_backbone_frozen_decoder_trainable(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir).model
    assert not any(p.requires_grad for p in model.clip.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    assert not model.clip.training


def test_a_training_step_changes_exactly_the_decoder(tiny_model_dir: Path, synthetic_samples) -> None:
    from PIL import Image

    loaded = load_model(tiny_model_dir)
    model = loaded.model
    samples, _ = synthetic_samples
    images = [Image.open(s.image).convert("RGB") for s in samples[:4]]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        acts = encode_images(model, pixel_values(loaded, images))
        cond = text_embeddings(loaded, ["segment crack"]).expand(4, -1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    logits = decode(model, acts, cond)
    loss = mixed_loss(logits, torch.rand_like(logits).round(), torch.tensor([True, True, False, False]))
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    decoder = {n for n, _ in model.named_parameters() if n.startswith("decoder.")}
    assert changed, "the step changed something"
    assert changed <= decoder, f"non-decoder parameters changed: {sorted(changed - decoder)[:3]}"
    assert len(changed) >= 0.9 * len(decoder)


def test_decoder_artifact_roundtrip_and_manifest(tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(tiny_model_dir)
    with torch.no_grad():
        for p in loaded.model.decoder.parameters():
            p.add_(0.01)
    manifest = save_decoder(loaded, tmp_path / "art")
    assert manifest["base_model"] == str(tiny_model_dir.resolve())
    assert manifest["base_revision"] == loaded.revision
    assert set(manifest["files"]) == {DECODER_FILE, "config.json"}
    assert len(manifest["config_sha256"]) == 64
    full = sum(p.stat().st_size for p in tiny_model_dir.glob("*.safetensors"))
    assert (tmp_path / "art" / DECODER_FILE).stat().st_size < full
    again = load_model(tmp_path / "art")
    for (n, a), b in zip(
        loaded.model.decoder.state_dict().items(), again.model.decoder.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), n


def test_loading_refuses_a_different_base(tiny_model_dir: Path, tmp_path: Path) -> None:
    save_decoder(load_model(tiny_model_dir), tmp_path / "art")
    other = init_tiny(tmp_path / "other-base", seed=1)
    with pytest.raises(CheckFailed, match="refusing to load"):
        load_model(tmp_path / "art", base=str(other))


def test_loading_refuses_a_corrupted_decoder(tiny_model_dir: Path, tmp_path: Path) -> None:
    save_decoder(load_model(tiny_model_dir), tmp_path / "art")
    f = tmp_path / "art" / DECODER_FILE
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckFailed, match="checksum mismatch"):
        load_model(tmp_path / "art")


def test_real_size_architecture_numbers() -> None:
    """The benchmark architecture is the real rd64-refined one (random weights)."""
    from transformers import CLIPSegForImageSegmentation

    from drywall_core.model.load import real_size_config

    with torch.device("meta"):
        model = CLIPSegForImageSegmentation(real_size_config())
    total = sum(p.numel() for p in model.parameters())
    decoder = sum(p.numel() for p in model.decoder.parameters())
    assert abs(total - 150.7e6) < 0.2e6
    assert abs(decoder - 1.127e6) < 0.01e6
    cfg = real_size_config()
    again = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))  # what a manifest carries
    assert again.to_dict() == cfg.to_dict()


def test_decoder_state_is_a_copy(tiny_model_dir: Path) -> None:
    """Best-epoch weights must survive later optimizer steps (a CPU ``.cpu()`` would alias them)."""
    from drywall_core.model.load import decoder_state

    loaded = load_model(tiny_model_dir)
    snap = decoder_state(loaded.model)
    with torch.no_grad():
        for p in loaded.model.decoder.parameters():
            p.add_(1.0)
    assert all(
        not torch.equal(snap[k], v)
        for k, v in loaded.model.decoder.state_dict().items()
        if v.is_floating_point() and v.numel()
    )


def test_base_fingerprint_matches_the_loaded_model(tiny_model_dir: Path) -> None:
    """Cache keys use the weights-free fingerprint; it must equal the loaded model's."""
    from drywall_core.model.load import RANDOM_REAL, base_fingerprint, load_base

    assert base_fingerprint(str(tiny_model_dir)) == load_model(tiny_model_dir).fingerprint
    assert base_fingerprint(RANDOM_REAL) == load_base(RANDOM_REAL).fingerprint
    other = init_tiny(tiny_model_dir.parent / "fp-other", seed=5)
    assert base_fingerprint(str(other)) != base_fingerprint(str(tiny_model_dir))
