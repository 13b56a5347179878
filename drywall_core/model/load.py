"""Build, load and save CLIPSeg: the frozen CLIP backbone plus the small trained decoder.

A model reference is one of:
- a Hugging Face hub id or a local folder in ``save_pretrained`` layout (a *base* model,
  e.g. ``CIDAS/clipseg-rd64-refined`` or the folder written by ``drywall model init-tiny``);
- ``random:clipseg-rd64``: the real rd64-refined architecture with random weights (benchmarks);
- a fine-tuned artifact folder (``decoder.safetensors`` + ``manifest.json``): decoder weights
  only (~4.5 MB at real size instead of a ~575 MB full checkpoint), applied to its base model,
  which must match the manifest (config hash and revision) or loading is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from drywall_core.base.errors import CheckFailed, InputError
from drywall_core.base.fsutil import atomic_open, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

BASE_MODEL_ID = "CIDAS/clipseg-rd64-refined"
RANDOM_REAL = "random:clipseg-rd64"
DECODER_FILE = "decoder.safetensors"
MANIFEST_FILE = "manifest.json"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_VOLATILE_CONFIG_KEYS = {
    "transformers_version",
    "_name_or_path",
    "architectures",
    "torch_dtype",
    "dtype",
    "_commit_hash",
    "output_hidden_states",
    "return_dict",
    "use_return_dict",
}


@dataclass
class LoadedModel:
    """A CLIPSeg model with its processor and the identity of its frozen base."""

    model: Any  # CLIPSegForImageSegmentation
    processor: Any  # CLIPSegProcessor
    base_id: str
    revision: str
    manifest: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"  # "int8": quantized for CPU inference (drywall_core.model.runtime.for_inference)
    parallel_images: bool = True  # on a CPU, encode a batch's images on parallel threads (runtime)
    text_memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # prompt -> embedding

    @property
    def image_size(self) -> int:
        size = self.processor.image_processor.size
        return int(size.get("height") or size.get("shortest_edge"))

    @property
    def output_size(self) -> int:
        """Side of the decoder's logits: tokens per side x the transposed convolutions' upsampling."""
        vc = self.model.config.vision_config
        factor = (vc.patch_size // 4) ** 2 if self.model.config.use_complex_transposed_convolution else vc.patch_size
        return (self.image_size // vc.patch_size) * factor

    @property
    def config_hash(self) -> str:
        return config_hash(self.model.config)

    @property
    def fingerprint(self) -> str:
        """Identity of everything the frozen activations depend on."""
        return fingerprint_of(self.base_id, self.revision, self.model.config, self.image_size)

    def threshold_for(self, prompt: str) -> float:
        """Decision threshold: the prompt's best validation threshold in a fine-tuned artifact, else 0.5."""
        return float(self.manifest.get("metrics", {}).get("thresholds", {}).get(prompt, 0.5))


def fingerprint_of(base_id: str, revision: str, config: Any, image_size: int) -> str:
    return hashlib.sha256(f"{base_id}|{revision}|{config_hash(config)}|{image_size}".encode()).hexdigest()[:16]


def config_hash(config: Any) -> str:
    def clean(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: clean(v) for k, v in sorted(d.items()) if k not in _VOLATILE_CONFIG_KEYS}
        return d

    return hashlib.sha256(json.dumps(clean(config.to_dict()), sort_keys=True, default=str).encode()).hexdigest()


def real_size_config() -> Any:
    """The ``CIDAS/clipseg-rd64-refined`` architecture (150.7 M parameters, decoder 1.127 M)."""
    from transformers import CLIPSegConfig, CLIPSegTextConfig, CLIPSegVisionConfig

    return CLIPSegConfig(
        text_config=CLIPSegTextConfig().to_dict(),
        vision_config=CLIPSegVisionConfig(patch_size=16).to_dict(),
        reduce_dim=64,
        extract_layers=[3, 6, 9],
        use_complex_transposed_convolution=True,
    )


def freeze_backbone(model: Any) -> Any:
    """Freeze every CLIP parameter and keep the backbone in eval mode; only the decoder trains."""
    for p in model.clip.parameters():
        p.requires_grad_(False)
    for p in model.decoder.parameters():
        p.requires_grad_(True)
    model.clip.eval()
    return model


def decoder_state(model: Any) -> dict[str, torch.Tensor]:
    """A copy of the decoder's weights (``.cpu()`` alone would alias the live tensors on CPU)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.decoder.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Loading


def _weights_revision(folder: Path) -> str:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise InputError(f"{folder}: no model weights (*.safetensors or *.bin) found")
    h = hashlib.sha256()
    for f in files:
        h.update(sha256_file(f).encode())
    return "sha256:" + h.hexdigest()[:16]


def load_processor(ref: str, revision: str | None = None) -> Any:
    """CLIPSeg processor with the PIL image processor (torchvision does not install beside torch 2.13)."""
    from transformers import CLIPSegProcessor, CLIPTokenizer, ViTImageProcessorPil

    image_processor = ViTImageProcessorPil.from_pretrained(ref, revision=revision)
    tokenizer = CLIPTokenizer.from_pretrained(ref, revision=revision)
    return CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer)


def cannot_load(ref: str, exc: BaseException) -> InputError:
    """One line saying why a base model is not there and what to do, instead of the hub's paragraph."""
    if Path(ref).exists():
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return InputError(f"{ref}: cannot load CLIPSeg model from this folder ({first})")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return InputError(
            f"{ref}: not in this host's Hugging Face cache and HF_HUB_OFFLINE is set, so nothing is downloaded: "
            "pre-seed the cache (huggingface-cli download) or set DRYWALL_BASE_MODEL to a model folder"
        )
    return InputError(
        f"{ref}: cannot download it from the hub and it is not in this host's Hugging Face cache: on hosts "
        "without internet set HF_HUB_OFFLINE=1 and pre-seed the cache, or set DRYWALL_BASE_MODEL to a model folder"
    )


def load_base(ref: str = BASE_MODEL_ID, revision: str | None = None, seed: int = 0) -> LoadedModel:
    """Load a base CLIPSeg (hub id, local folder, or ``random:clipseg-rd64``), backbone frozen."""
    from transformers import CLIPSegForImageSegmentation

    if ref == RANDOM_REAL:
        from drywall_core.model.tiny import make_processor, tiny_tokenizer

        torch.manual_seed(seed)
        model = CLIPSegForImageSegmentation(real_size_config())
        processor = make_processor(tiny_tokenizer(), image_size=352)
        return LoadedModel(freeze_backbone(model), processor, RANDOM_REAL, f"random-seed-{seed}")
    base_id, revision_id = _base_identity(ref, revision)
    try:
        model = CLIPSegForImageSegmentation.from_pretrained(ref, revision=revision)
        processor = load_processor(ref, revision)
    except OSError as exc:
        raise cannot_load(ref, exc) from None
    return LoadedModel(freeze_backbone(model), processor, base_id, _hub_commit(ref, model.config, revision_id))


def _base_identity(ref: str, revision: str | None) -> tuple[str, str]:
    """(base id, revision) of a hub id or local folder; a folder's revision is its weights' sha256."""
    local = Path(ref)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise InputError(f"{local}: not a CLIPSeg model folder (no config.json)")
        return str(local.resolve()), _weights_revision(local)
    if local.exists() or ref.startswith((".", "/")):
        raise InputError(f"{ref}: model folder not found")
    return ref, revision or "main"


def _hub_commit(ref: str, config: Any, revision_id: str) -> str:
    """A hub model's resolved commit, when the hub told us; local folders keep their weights hash."""
    commit = getattr(config, "_commit_hash", None)
    return commit if commit and not Path(ref).is_dir() else revision_id


def base_fingerprint(ref: str, revision: str | None = None, seed: int = 0) -> str:
    """``load_base(ref).fingerprint`` from the config files alone, without instantiating the model.

    For cache keys: a real-size model is 150 M parameters to build just to learn its identity.
    """
    from transformers import CLIPSegConfig, ViTImageProcessorPil

    if ref == RANDOM_REAL:
        return fingerprint_of(RANDOM_REAL, f"random-seed-{seed}", real_size_config(), 352)
    base_id, revision_id = _base_identity(ref, revision)
    try:
        config = CLIPSegConfig.from_pretrained(ref, revision=revision)
        size = ViTImageProcessorPil.from_pretrained(ref, revision=revision).size
    except OSError as exc:
        raise cannot_load(ref, exc) from None
    image_size = int(size.get("height") or size.get("shortest_edge"))
    return fingerprint_of(base_id, _hub_commit(ref, config, revision_id), config, image_size)


def is_artifact(ref: str | Path) -> bool:
    p = Path(ref)
    return (p / DECODER_FILE).is_file() and (p / MANIFEST_FILE).is_file()


def load_model(ref: str | Path, base: str | None = None) -> LoadedModel:
    """Load a base model, or a fine-tuned decoder artifact on top of its (verified) base."""
    if not is_artifact(ref):
        return load_base(str(ref))
    from safetensors.torch import load_file

    folder = Path(ref)
    manifest = read_manifest(folder)
    verify_files(folder, manifest)
    base_ref = base or manifest["base_model"]
    loaded = load_base(base_ref, seed=int(manifest.get("base_seed", 0)))
    if loaded.config_hash != manifest["config_sha256"] or loaded.revision != manifest["base_revision"]:
        raise CheckFailed(
            f"{folder}: decoder was trained on base {manifest['base_model']} "
            f"(revision {manifest['base_revision']}, config {manifest['config_sha256'][:12]}) but "
            f"{base_ref} is revision {loaded.revision}, config {loaded.config_hash[:12]}; refusing to load"
        )
    loaded.model.decoder.load_state_dict(load_file(str(folder / DECODER_FILE)), strict=True)
    loaded.manifest = manifest
    return loaded


def read_manifest(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(folder) / MANIFEST_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{folder / MANIFEST_FILE}: unreadable manifest ({exc})") from exc


def verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Every file listed in the manifest must exist with its recorded sha256."""
    for name, digest in manifest.get("files", {}).items():
        path = Path(folder) / name
        if not path.is_file():
            raise CheckFailed(f"{path}: listed in the manifest but missing")
        if sha256_file(path) != digest:
            raise CheckFailed(f"{path}: checksum mismatch (corrupted or modified)")


def code_version() -> str:
    try:
        from importlib.metadata import version

        return version("drywall-qa")
    except Exception:  # noqa: BLE001
        return "unknown"


def save_decoder(loaded: LoadedModel, out: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the decoder-only artifact: weights, model config, manifest with sha256 of every file."""
    from safetensors.torch import save

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / DECODER_FILE, "wb") as f:
        f.write(save(decoder_state(loaded.model)))
    atomic_write_text(out / "config.json", loaded.model.config.to_json_string())
    extra = dict(extra or {})
    files = {name: sha256_file(out / name) for name in [DECODER_FILE, "config.json", *extra.pop("files", [])]}
    manifest = {
        "base_model": loaded.base_id,
        "base_revision": loaded.revision,
        "config_sha256": loaded.config_hash,
        "image_size": loaded.image_size,
        "code_version": code_version(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "decoder_parameters": sum(p.numel() for p in loaded.model.decoder.parameters()),
        **extra,
        "files": files,
    }
    atomic_write_text(out / MANIFEST_FILE, json.dumps(manifest, indent=2))
    return manifest
