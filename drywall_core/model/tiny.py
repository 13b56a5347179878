"""The tiny CLIPSeg the tests and the demo run: the real architecture's code path (tokenizer, CLIP
towers, decoder, processor), small enough to train in seconds on a CPU. ``drywall model init-tiny``
writes one; it loads like any base model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from drywall_core.model.load import CLIP_MEAN, CLIP_STD


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 byte-level BPE alphabet."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


TINY_WORDS = [
    "segment",
    "crack",
    "cracks",
    "wall",
    "the",
    "in",
    "drywall",
    "highlight",
    "find",
    "plaster",
    "taping",
    "area",
    "joint",
    "taped",
    "seam",
    "tape",
    "mudded",
    "a",
    "of",
    "photo",
    "hairline",
    "corner",
    "screw",
    "pop",
    "nail",
    "damage",
    "paint",
    "surface",
    "mask",
    "region",
]


def tiny_tokenizer(words: list[str] | None = None) -> Any:
    """A real (small) CLIP BPE vocabulary: every byte, plus merges that spell whole prompt words."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    seen = set(vocab)
    for word in sorted(set(words or TINY_WORDS)):
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            merged = symbols[0] + symbols[1]
            rule = (symbols[0], symbols[1])
            if merged not in seen:
                seen.add(merged)
                vocab.append(merged)
                merges.append(rule)
            symbols = [merged, *symbols[2:]]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, model_max_length=77)


def tiny_config(vocab_size: int, bos: int, eos: int, image_size: int = 128) -> Any:
    from transformers import CLIPSegConfig, CLIPSegTextConfig, CLIPSegVisionConfig

    text = CLIPSegTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    vision = CLIPSegVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
    )
    return CLIPSegConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        projection_dim=16,
        reduce_dim=16,
        extract_layers=[1, 2, 3],
        decoder_num_attention_heads=2,
        decoder_intermediate_size=32,
        use_complex_transposed_convolution=True,
    )


def make_processor(tokenizer: Any, image_size: int) -> Any:
    from transformers import CLIPSegProcessor, ViTImageProcessorPil

    image_processor = ViTImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=2,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )
    return CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer)


def init_tiny(out: Path, seed: int = 0, image_size: int = 128) -> Path:
    """Write a tiny random CLIPSeg (with a real small vocabulary) in ``save_pretrained`` layout."""
    from transformers import CLIPSegForImageSegmentation

    out = Path(out)
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(
        tiny_config(len(tok), tok.bos_token_id, tok.eos_token_id, image_size=image_size)
    )
    # HF initialises the decoder's FiLM/reduce/transposed-conv weights with std 1, which gives
    # logits of ~30 and a long plateau before learning starts; PyTorch's default (fan-in scaled)
    # init gives the tiny decoder the well-conditioned start a pretrained one has.
    for module in model.decoder.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            module.reset_parameters()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    make_processor(tok, image_size).save_pretrained(out)
    return out
