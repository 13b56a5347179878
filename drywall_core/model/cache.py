"""Frozen-activation cache: the speed lever of fine-tuning.

The CLIP backbone is frozen, so the vision activations the decoder reads (hidden states after
the ``extract_layers``) depend only on the image. We compute them once per image (and once per
flipped view, for augmentation), store them as ``.npy`` shards that are memory-mapped at
training time, and run only the decoder in every epoch. Text embeddings are computed once per
distinct prompt. The default encoding is int8 with one scale per token (half the bytes of fp16:
1.12 MB per view at real size instead of 2.23 MB); fp16 and fp32 remain selectable.

Keys: sha256 of the image bytes (+ ``:flip``), inside a folder named by the model fingerprint
(base id + revision + config hash + input size) and dtype, so any change of model, input size
or image content misses the cache. Shards are written under a temporary name and the index is
rewritten atomically after each batch, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from drywall_core.base.fsutil import atomic_open, atomic_write_text
from drywall_core.data.images import open_rgb
from drywall_core.model.load import LoadedModel
from drywall_core.model.runtime import encode_images, parallel_images, pixel_values

INDEX = "index.json"
SAVE_EVERY_S = 2.0  # how often a build rewrites the index (an interrupt loses at most this much)


def load_rgb(path: Path, flip: bool = False) -> Image.Image:
    """The image as displayed (EXIF orientation, 8-bit, pixel limit), mirrored for the flip view."""
    rgb = open_rgb(path)
    return ImageOps.mirror(rgb) if flip else rgb


# ---------------------------------------------------------------------------------------------
# The cache


def image_key(path: Path, flip: bool = False, sha256: str | None = None) -> str:
    """Cache key of a view: the image's sha256 (given, or read from the file), ``:flip`` if mirrored."""
    h = sha256 or hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return f"{h}:flip" if flip else h


@dataclass(frozen=True)
class CacheItem:
    path: Path
    flip: bool = False
    sha256: str | None = None

    @property
    def key(self) -> str:
        return image_key(self.path, self.flip, self.sha256)


def cache_items(samples: Sequence[Any], flip: bool) -> list[CacheItem]:
    """What training reads: every image, plus the mirrored view of training images when ``flip``."""
    return [
        CacheItem(s.image, f, getattr(s, "sha256", None))
        for s in samples
        for f in ((False, True) if flip and s.side == "train" else (False,))
    ]


CACHE_DTYPES = ("int8", "float16", "float32")


def quantize_rows(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per token: each (…, D) row is scaled by its own max |x| / 127.

    One scale per token keeps the CLS token and the large-norm tokens ViTs grow from costing the
    precision of the others. Half the bytes of fp16; the error of an element is at most half a
    step of its token's scale.
    """
    scale = np.abs(acts).max(axis=-1, keepdims=True) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(acts / scale), -127, 127).astype(np.int8)
    return q, scale[..., 0].astype(np.float16)


def scales_name(shard: str) -> str:
    return shard.replace(".npy", ".scales.npy")


class ActivationCache:
    """Memory-mapped activation shards (int8 with per-token scales, fp16 or fp32) for one model fingerprint."""

    def __init__(self, root: Path, loaded: LoadedModel, dtype: str = "int8") -> None:
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype must be one of {', '.join(CACHE_DTYPES)}, not {dtype}")
        self.loaded, self.dtype = loaded, dtype
        self.dir = Path(root) / f"{loaded.fingerprint}-{dtype}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index = self._read_index()
        self._maps: dict[str, np.ndarray] = {}
        self._dirty, self._saved_at = False, time.monotonic()

    def _read_index(self) -> dict[str, Any]:
        try:
            index = json.loads((self.dir / INDEX).read_text())
        except (OSError, json.JSONDecodeError):
            index = {}
        if index.get("fingerprint") != self.loaded.fingerprint:
            index = {
                "fingerprint": self.loaded.fingerprint,
                "base_model": self.loaded.base_id,
                "revision": self.loaded.revision,
                "image_size": self.loaded.image_size,
                "dtype": self.dtype,
                "entries": {},
            }
        return index

    @property
    def entries(self) -> dict[str, list]:
        return self.index["entries"]

    def __contains__(self, key: str) -> bool:
        return key in self.entries and (self.dir / self.entries[key][0]).is_file()

    def missing(self, items: Sequence[CacheItem], keys: Sequence[str]) -> list[tuple[CacheItem, str]]:
        return [(it, k) for it, k in zip(items, keys, strict=True) if k not in self]

    def build(
        self,
        items: Sequence[CacheItem],
        batch_size: int = 8,
        progress: bool = True,
        keys: Sequence[str] | None = None,
        on_batch: Any = None,
        on_progress: Any = None,
    ) -> dict[str, int]:
        """Encode every item not yet cached; returns counts. Safe to interrupt and call again.
        ``on_batch(batch index)`` and ``on_progress(views encoded, views to encode)`` after each batch."""
        keys = list(keys) if keys is not None else [it.key for it in items]
        todo = self.pending(items, keys)
        bar = tqdm(total=len(todo), desc="activation cache", unit="img", disable=None if progress and todo else True)
        try:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                self.register(*self.encode_shard(chunk))
                bar.update(len(chunk))
                if on_batch is not None:
                    on_batch(start // batch_size)
                if on_progress is not None:
                    on_progress(start + len(chunk), len(todo))
        finally:
            self.flush()  # what was encoded is kept, also on an interrupt
            bar.close()
        return {"encoded": len(todo), "cached": len(items) - len(todo)}

    def pending(self, items: Sequence[CacheItem], keys: Sequence[str]) -> list[tuple[CacheItem, str]]:
        """Items not cached yet, one per distinct key."""
        return list({k: (it, k) for it, k in self.missing(items, keys)}.values())

    def encode_shard(self, chunk: Sequence[tuple[CacheItem, str]]) -> tuple[str, list[str], list[int]]:
        """Encode a batch through the frozen backbone and write it as one shard file (no index update).

        Safe to run in many processes at once (unique shard names, atomic writes); the caller
        records the result with :meth:`register`, the index's single writer.
        """
        model = self.loaded.model
        device = next(model.parameters()).device
        images = [load_rgb(it.path, it.flip) for it, _ in chunk]
        with torch.no_grad():  # on a CPU the batch's images are encoded on parallel threads (runtime.encode_images)
            acts = encode_images(model, pixel_values(self.loaded, images).to(device), parallel_images(self.loaded))
        return self.write_shard(acts.float().cpu().numpy(), [k for _, k in chunk])

    def write_shard(self, acts: np.ndarray, keys: list[str]) -> tuple[str, list[str], list[int]]:
        """Store float activations (B, L, T, D) in this cache's dtype as one shard (scales first, data last)."""
        arr, scales = quantize_rows(acts) if self.dtype == "int8" else (acts.astype(self.dtype), None)
        return self.save_shard(arr, scales), list(keys), list(arr.shape[1:])

    def save_shard(self, arr: np.ndarray, scales: np.ndarray | None) -> str:
        """Write already-encoded rows (and their int8 scales) as a new shard; returns its name.
        The scales go first and the data last, each atomically, so a shard file is never half there."""
        name = f"shard-{uuid.uuid4().hex[:12]}.npy"
        if scales is not None:
            with atomic_open(self.dir / scales_name(name), "wb") as f:
                np.save(f, scales)
        with atomic_open(self.dir / name, "wb") as f:
            np.save(f, arr)
        return name

    def register(self, shard: str, keys: list[str], shape: list[int]) -> None:
        """Add a written shard to the index; the index file is rewritten at most every
        ``SAVE_EVERY_S`` (rewriting it per batch is quadratic in the dataset) and by :meth:`flush`.
        An interrupt loses at most those seconds of work: unindexed shards are re-encoded and pruned."""
        for row, key in enumerate(keys):
            self.entries[key] = [shard, row]
        self.index["shape"] = shape
        self._dirty = True
        if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
            self.flush()

    def flush(self) -> None:
        """Write the index now (atomically), if anything was registered since the last write."""
        if self._dirty:
            atomic_write_text(self.dir / INDEX, json.dumps(self.index))
            self._dirty, self._saved_at = False, time.monotonic()

    def _map(self, shard: str) -> np.ndarray:
        if shard not in self._maps:
            self._maps[shard] = np.load(self.dir / shard, mmap_mode="r")
        return self._maps[shard]

    def get(self, keys: Sequence[str]) -> torch.Tensor:
        """Activations for ``keys`` as float32 (B, L, T, D)."""
        if self.dtype != "int8":
            rows = [self._map(self.entries[k][0])[self.entries[k][1]] for k in keys]
            return torch.from_numpy(np.stack(rows).astype(np.float32, copy=False))
        q = np.stack([self._map(self.entries[k][0])[self.entries[k][1]] for k in keys]).astype(np.float32)
        s = np.stack([self._map(scales_name(self.entries[k][0]))[self.entries[k][1]] for k in keys])
        return torch.from_numpy(q * s[..., None].astype(np.float32))

    def bytes_per_view(self) -> float:
        """Disk bytes per cached view (data and scales)."""
        files = list(self.dir.glob("shard-*.npy"))
        return sum(f.stat().st_size for f in files) / max(len(self.entries), 1)

    def prune(self) -> int:
        """Delete shard files no index entry points to (left by an interrupted build)."""
        live = {v[0] for v in self.entries.values()}
        live |= {scales_name(name) for name in live}
        dead = [p for p in self.dir.glob("shard-*.npy") if p.name not in live]
        for p in dead:
            os.unlink(p)
        return len(dead)


# ---------------------------------------------------------------------------------------------
# The cache shared through the artifact store


class SharedCache:
    """The activation cache mirrored in the artifact store, so a fresh GPU host encodes only what
    no host has encoded before.

    Entries live at ``cache/<fingerprint>-<dtype>/<image sha256>[.flip].npz`` (one view each,
    content-addressed: the same image under the same model is the same entry on every host).
    :meth:`build` downloads what the store has and this host lacks, encodes the rest through the
    local cache, and uploads what it encoded.
    """

    GROUP = 32  # downloaded views per local shard

    def __init__(self, cache: ActivationCache, store: Any) -> None:
        self.cache, self.store = cache, store
        self.prefix = f"cache/{cache.dir.name}/"

    @staticmethod
    def _name(key: str) -> str:
        return key.replace(":", ".") + ".npz"

    def _remote(self) -> set[str]:
        return {k[len(self.prefix) :] for k in self.store.list(self.prefix)}

    def _download(self, keys: Sequence[str]) -> None:
        from io import BytesIO

        def fetch(key: str) -> tuple[np.ndarray, np.ndarray | None]:
            with np.load(BytesIO(self.store.get_bytes(self.prefix + self._name(key)))) as z:
                return z["data"], z.get("scales")

        with ThreadPoolExecutor(8) as pool:
            rows = list(pool.map(fetch, keys))
        arr = np.stack([r[0] for r in rows])
        # stored exactly as encoded: int8 rows keep their scales, no second rounding
        scales = np.stack([r[1] for r in rows]) if self.cache.dtype == "int8" else None
        self.cache.register(self.cache.save_shard(arr, scales), list(keys), list(arr.shape[1:]))
        self.cache.flush()

    def _upload(self, key: str) -> None:
        from io import BytesIO

        shard, row = self.cache.entries[key]
        parts = {"data": np.asarray(self.cache._map(shard)[row])}
        if self.cache.dtype == "int8":
            parts["scales"] = np.asarray(self.cache._map(scales_name(shard))[row])
        buf = BytesIO()
        np.savez(buf, **parts)
        self.store.put_bytes(self.prefix + self._name(key), buf.getvalue())

    def build(
        self,
        items: Sequence[CacheItem],
        batch_size: int = 8,
        progress: bool = True,
        keys: Sequence[str] | None = None,
        on_cache: Any = None,
    ) -> dict[str, int]:
        """Download, encode what is left, upload; returns encoded/downloaded/uploaded/cached counts.
        ``on_cache(done, total)``: after each encoded batch."""

        keys = list(keys) if keys is not None else [it.key for it in items]
        remote = self._remote()
        wanted = list(dict.fromkeys(k for k in keys if k not in self.cache))
        fetch = [k for k in wanted if self._name(k) in remote]
        bar = tqdm(total=len(fetch), desc="shared cache", unit="view", disable=None if progress and fetch else True)
        for start in range(0, len(fetch), self.GROUP):
            self._download(fetch[start : start + self.GROUP])
            bar.update(len(fetch[start : start + self.GROUP]))
        bar.close()
        stats = self.cache.build(items, batch_size, progress, keys=keys, on_progress=on_cache)
        push = [k for k in dict.fromkeys(keys) if self._name(k) not in remote]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self._upload, push))
        return {**stats, "downloaded": len(fetch), "uploaded": len(push)}
