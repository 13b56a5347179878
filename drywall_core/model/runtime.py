"""The forward pass, written once: images and prompts in, probability maps at each image's size out.

Every caller that runs the model on images goes through :func:`probabilities`: prediction, field
predictions, evaluation, the shadow comparison, the label queue's challenger, drift model signals
and the prediction service. It encodes each image once through the vision layers the decoder reads,
decodes every prompt against those activations, and upsamples each map to its image's size. The
choices that make it fast are made here and nowhere else:

- **precision** (:func:`for_inference`): on a CPU the vision tower's linear layers can be
  dynamically quantized to int8 (93% of its multiply-adds); the decoder and text tower stay fp32;
- **parallel images** (:func:`parallel_images`): on a CPU a batch is split into one chunk per
  torch thread, each encoded with single-threaded kernels (on 2 cores ~1.4x the images/s of one
  call with 2-thread kernels, bench/predict.py);
- **batching**: at most ``batch_size`` images go through the backbone at once, so memory stays
  flat however many are given;
- **text embeddings** are computed once per distinct prompt and model, and a prompt the model
  cannot take fails before any image is encoded.

Training does not come here: it decodes cached activations (:mod:`drywall_core.model.cache`) with
:func:`decode` and :func:`text_embeddings`, the same pieces.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from drywall_core.base.errors import InputError
from drywall_core.model.load import LoadedModel, load_model

PRECISIONS = ("fp32", "int8")
BATCH_SIZE = 8

ProbabilityMaps = dict[str, np.ndarray]  # prompt -> (height, width) foreground probabilities of one image


# ---------------------------------------------------------------------------------------------
# Loading for inference


def for_inference(loaded: LoadedModel, precision: str = "int8") -> LoadedModel:
    """The model as prediction runs it, in place: ``fp32`` as trained, or ``int8`` -- on a CPU, the
    linear layers of the vision tower dynamically quantized (weights per channel once, activations
    per batch). On a GPU the model stays as it is (dynamic int8 is a CPU kernel). On 2 cores int8
    with parallel images gives about twice the images/s of the plain Hugging Face call, with masks
    that agree with fp32 (bench/predict.py). A quantized model is for inference only.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, not '{precision}'")
    loaded.model.eval()
    if device_of(loaded).type != "cpu" or precision == "fp32" or loaded.precision == precision:
        return loaded
    with warnings.catch_warnings():  # torch's eager quantization API prints a migration notice
        warnings.simplefilter("ignore")
        loaded.model.clip.vision_model = torch.ao.quantization.quantize_dynamic(
            loaded.model.clip.vision_model, {torch.nn.Linear}, dtype=torch.qint8
        )
    loaded.precision = precision
    return loaded


DEVICES = ("auto", "cpu", "cuda")


def inference_device(choice: str = "auto") -> torch.device:
    """Where prediction runs: ``auto`` is the GPU when one is visible, else the CPU."""
    if choice not in DEVICES:
        raise InputError(f"inference device must be one of {', '.join(DEVICES)}, not '{choice}'")
    if choice == "cuda" and not torch.cuda.is_available():
        raise InputError("DRYWALL_INFERENCE_DEVICE=cuda, but no CUDA device is visible to this process")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


def load_for_inference(ref: str | Path, precision: str = "int8", device: str = "auto") -> LoadedModel:
    """A model folder, fine-tuned artifact or hub id, loaded onto its inference device (the GPU where
    there is one) and prepared by :func:`for_inference` (int8 applies on a CPU only)."""
    loaded = load_model(ref)
    target = inference_device(device)
    if target.type != "cpu":
        loaded.model.to(target)
    return for_inference(loaded, precision)


def device_of(loaded: LoadedModel) -> torch.device:
    return next(loaded.model.parameters()).device


def parallel_images(loaded: LoadedModel) -> bool:
    """Whether a batch's images are encoded on parallel threads: on a CPU with 2+ torch threads,
    unless switched off on the model (``loaded.parallel_images``, which the benchmark compares)."""
    return loaded.parallel_images and device_of(loaded).type == "cpu" and torch.get_num_threads() > 1


# ---------------------------------------------------------------------------------------------
# The single call


def probabilities(
    loaded: LoadedModel, images: Sequence[Image.Image], prompts: Sequence[str], batch_size: int = BATCH_SIZE
) -> list[ProbabilityMaps]:
    """Per image, ``{prompt: probabilities at the image's size}``; each image is encoded once."""
    prompts = list(dict.fromkeys(prompts))
    if not prompts:
        raise InputError("no prompt given: the model answers a text prompt such as 'segment crack'")
    return probabilities_each(loaded, images, [prompts] * len(images), batch_size)


@torch.no_grad()
def probabilities_each(
    loaded: LoadedModel,
    images: Sequence[Image.Image],
    prompts_per_image: Sequence[Sequence[str]],
    batch_size: int = BATCH_SIZE,
) -> list[ProbabilityMaps]:
    """Per image, its own prompts: a batch of the prediction service holds photos of different
    requests. Each image is encoded once; each distinct prompt is decoded against the images that
    asked for it."""
    wanted = [list(dict.fromkeys(ps)) for ps in prompts_per_image]
    if len(wanted) != len(images):
        raise ValueError(f"{len(images)} images but {len(wanted)} prompt lists")
    if any(not ps for ps in wanted):
        raise InputError("no prompt given: the model answers a text prompt such as 'segment crack'")
    return _forward(loaded, images, wanted, batch_size, pooled=False)[0]


def probabilities_and_embeddings(
    loaded: LoadedModel, images: Sequence[Image.Image], prompts: Sequence[str], batch_size: int = BATCH_SIZE
) -> tuple[list[ProbabilityMaps], np.ndarray]:
    """:func:`probabilities`, and each image's embedding (:func:`image_embeddings`) from the same
    encode: the whole vision tower runs (two more layers than the masks need, on the real model
    about a sixth more), so a photo predicted is never encoded again for drift or the label queue."""
    prompts = list(dict.fromkeys(prompts))
    if not prompts:
        raise InputError("no prompt given: the model answers a text prompt such as 'segment crack'")
    maps, pooled = _forward(loaded, images, [prompts] * len(images), batch_size, pooled=True)
    hidden = loaded.model.config.vision_config.hidden_size
    return maps, np.concatenate(pooled) if pooled else np.zeros((0, hidden), np.float32)


@torch.no_grad()
def _forward(
    loaded: LoadedModel, images: Sequence[Image.Image], wanted: list[list[str]], batch_size: int, pooled: bool
) -> tuple[list[ProbabilityMaps], list[np.ndarray]]:
    distinct = list(dict.fromkeys(p for ps in wanted for p in ps))
    conds = text_embeddings_cached(loaded, distinct) if distinct else None  # a bad prompt fails first
    index = {p: i for i, p in enumerate(distinct)}
    out: list[ProbabilityMaps] = []
    vectors: list[np.ndarray] = []
    step = max(batch_size, 1)
    for start in range(0, len(images), step):
        chunk, asks = list(images[start : start + step]), wanted[start : start + step]
        pv = pixel_values(loaded, chunk).to(device_of(loaded))
        if pooled:
            acts, pool = encode_images_pooled(loaded.model, pv, parallel_images(loaded))
            vectors.append(pool.float().cpu().numpy())
        else:
            acts = encode_images(loaded.model, pv, parallel_images(loaded))
        maps: list[ProbabilityMaps] = [{} for _ in chunk]
        for p in dict.fromkeys(q for ps in asks for q in ps):
            rows = [j for j, ps in enumerate(asks) if p in ps]
            sel = acts if len(rows) == len(chunk) else acts[rows]
            logits = decode(loaded.model, sel, conds[index[p] : index[p] + 1].expand(len(rows), -1))
            for j, prob in zip(rows, upsample_probs(logits, [chunk[j].size for j in rows]), strict=True):
                maps[j][p] = prob
        out += [{p: m[p] for p in ps} for m, ps in zip(maps, asks, strict=True)]
    return out, vectors


@torch.no_grad()
def image_embeddings(loaded: LoadedModel, images: Sequence[Image.Image], batch_size: int = BATCH_SIZE) -> np.ndarray:
    """The vision tower's pooled output per image, (N, hidden) float32: the frozen CLIP image
    representation that drift, near-duplicate detection and batch diversity compare. The whole tower
    runs (the masks need only the layers up to the last extract layer)."""
    out = []
    for start in range(0, len(images), max(batch_size, 1)):
        pv = pixel_values(loaded, list(images[start : start + batch_size])).to(device_of(loaded))
        out.append(pooled_images(loaded.model, pv, parallel_images(loaded)).float().cpu().numpy())
    hidden = loaded.model.config.vision_config.hidden_size
    return np.concatenate(out) if out else np.zeros((0, hidden), np.float32)


def pooled_images(model: Any, pixel_values: torch.Tensor, parallel: bool = False) -> torch.Tensor:
    """(B, hidden) pooled outputs; on a CPU one chunk per torch thread, as :func:`encode_images`."""

    def run(chunk: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.clip.vision_model(pixel_values=chunk, interpolate_pos_encoding=True).pooler_output

    return torch.cat(_per_thread(run, pixel_values, parallel))


def _per_thread(run: Callable[[torch.Tensor], Any], pixel_values: torch.Tensor, parallel: bool) -> list[Any]:
    """``run`` on the batch, or (``parallel``, on a CPU with 2+ torch threads) on one chunk per
    thread, each with single-threaded kernels; the chunks' results in order."""
    workers = min(torch.get_num_threads(), len(pixel_values))
    if not parallel or workers < 2 or pixel_values.device.type != "cpu":
        return [run(pixel_values)]
    with _single_threaded_kernels():
        return list(_pool(workers).map(run, pixel_values.tensor_split(workers)))


def probabilities_for(loaded: LoadedModel, images: Sequence[Image.Image], prompt: str) -> list[np.ndarray]:
    """The maps of one prompt, one per image (:func:`probabilities` for a single prompt)."""
    return [maps[prompt] for maps in probabilities(loaded, images, [prompt])]


def text_embeddings_cached(loaded: LoadedModel, prompts: Sequence[str]) -> torch.Tensor:
    """:func:`text_embeddings`, memoized per prompt on the model (the text tower is frozen)."""
    memo = loaded.text_memo
    missing = [p for p in prompts if p not in memo]
    if missing:
        for p, emb in zip(missing, text_embeddings(loaded, missing), strict=True):
            memo[p] = emb
    return torch.stack([memo[p] for p in prompts]).to(device_of(loaded))


# ---------------------------------------------------------------------------------------------
# The pieces (shared with training and the activation cache)


@contextlib.contextmanager
def _truncated_vision(model: Any) -> Iterator[int]:
    """Run only the vision layers the decoder reads (layers after the last extract layer are wasted)."""
    encoder = model.clip.vision_model.encoder
    full = encoder.layers
    keep = max(model.config.extract_layers) + 1
    encoder.layers = torch.nn.ModuleList(list(full)[:keep])
    try:
        yield keep
    finally:
        encoder.layers = full


def encode_images(model: Any, pixel_values: torch.Tensor, parallel: bool = False) -> torch.Tensor:
    """Vision activations at the extract layers, stacked: (B, L, T, D).

    ``parallel`` (CPU): the batch is split into one chunk per torch thread, each encoded by its own
    thread with single-threaded kernels: the int8 matrix products of a few hundred rows run faster
    apart than split in two, and the threads never wait on each other per op.
    """
    with _truncated_vision(model):
        return torch.cat(_per_thread(lambda chunk: _encode(model, chunk), pixel_values, parallel))


def encode_images_pooled(
    model: Any, pixel_values: torch.Tensor, parallel: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`encode_images` through the whole tower, with its pooled output (B, hidden) too."""
    parts = _per_thread(lambda chunk: _encode_pooled(model, chunk), pixel_values, parallel)
    return torch.cat([a for a, _ in parts]), torch.cat([p for _, p in parts])


def _encode(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    return _encode_pooled(model, pixel_values)[0]


def _encode_pooled(model: Any, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():  # grad mode is per thread: a worker does not inherit the caller's
        out = model.clip.vision_model(
            pixel_values=pixel_values, interpolate_pos_encoding=True, output_hidden_states=True
        )
    return torch.stack([out.hidden_states[i + 1] for i in model.config.extract_layers], dim=1), out.pooler_output


_KERNEL_THREADS = threading.Lock()
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool kept for the process (called under _KERNEL_THREADS): new threads cost ~1 ms of torch
    set-up per call, which a small model's batch notices."""
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="drywall-encode")
    return _POOLS[workers]


@contextlib.contextmanager
def _single_threaded_kernels() -> Iterator[None]:
    """torch's intra-op threads at 1 while the workers run (one caller at a time: it is process-wide)."""
    with _KERNEL_THREADS:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def decode(model: Any, activations: torch.Tensor, conditional: torch.Tensor) -> torch.Tensor:
    """Decoder logits (B, S, S) from stacked activations (B, L, T, D) and text embeddings (B, P)."""
    logits = model.decoder(list(activations.unbind(dim=1)), conditional).logits
    return logits if logits.dim() == 3 else logits.unsqueeze(0)


def text_embeddings(loaded: LoadedModel, prompts: Sequence[str]) -> torch.Tensor:
    """Conditional embeddings (P, projection_dim), one per prompt; a prompt too long is refused."""
    tok = loaded.processor.tokenizer(list(prompts), padding=True, return_tensors="pt")
    limit = loaded.model.config.text_config.max_position_embeddings
    if tok["input_ids"].shape[1] > limit:
        lengths = tok["attention_mask"].sum(dim=1).tolist()
        worst = max(range(len(prompts)), key=lambda i: lengths[i])
        raise InputError(
            f"prompt '{prompts[worst][:60]}...' is {lengths[worst]} tokens; the model takes at most {limit}"
        )
    device = device_of(loaded)
    with torch.no_grad():
        return loaded.model.get_conditional_embeddings(
            batch_size=len(prompts),
            input_ids=tok["input_ids"].to(device),
            attention_mask=tok["attention_mask"].to(device),
        )


def pixel_values(loaded: LoadedModel, images: Sequence[Image.Image]) -> torch.Tensor:
    return loaded.processor.image_processor(list(images), return_tensors="pt")["pixel_values"]


def upsample_probs(logits: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Sigmoid probabilities resized (bilinear) to each (width, height)."""
    out = []
    for lg, (w, h) in zip(logits, sizes, strict=True):
        up = F.interpolate(lg[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)
        out.append(torch.sigmoid(up)[0, 0].cpu().numpy())
    return out
