"""Image embeddings stored by photo content, beside the activation cache: a photo is encoded once.

The frozen CLIP vision tower's pooled output (:func:`drywall_core.model.runtime.image_embeddings`)
is what embedding drift, near-duplicate checks and batch diversity compare. It depends only on the
photo and on the frozen backbone (and its precision), not on the fine-tuned decoder, so one store
per backbone fingerprint serves every model version: ``<root>/<fingerprint>-<precision>/<sha[:2]>/
<sha256>.npy``, each written to a temporary name and renamed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from drywall_core.data.images import open_rgb
from drywall_core.model.load import LoadedModel

HEX = frozenset("0123456789abcdef")


class EmbeddingStore:
    """Embeddings of one backbone, by image sha256."""

    def __init__(self, root: Path, loaded: LoadedModel) -> None:
        self.root = Path(root) / f"{loaded.fingerprint}-{loaded.precision}"
        self.loaded = loaded

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not set(sha256) <= HEX:  # the name of a file: only a digest enters it
            raise ValueError(f"not a sha256 digest: {sha256[:80]!r}")
        return self.root / sha256[:2] / f"{sha256}.npy"

    def get(self, sha256: str) -> np.ndarray | None:
        try:
            return np.load(self.path(sha256), allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError):
            return None  # absent, or a torn file from a crash: computed again

    def put(self, sha256: str, vector: np.ndarray) -> None:
        dest = self.path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".emb-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.asarray(vector, dtype=np.float32), allow_pickle=False)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def embed(self, paths: Sequence[Path], shas: Sequence[str], batch_size: int = 8) -> np.ndarray:
        """(N, hidden) embeddings of the photos: stored ones read, the others computed and stored."""
        from drywall_core.model.runtime import image_embeddings

        got: list[np.ndarray | None] = [self.get(s) for s in shas]
        todo = [i for i, v in enumerate(got) if v is None]
        for start in range(0, len(todo), batch_size):
            idx = todo[start : start + batch_size]
            vectors = image_embeddings(self.loaded, [open_rgb(paths[i]) for i in idx], batch_size)
            for i, vec in zip(idx, vectors, strict=True):
                self.put(shas[i], vec)
                got[i] = vec
        hidden = self.loaded.model.config.vision_config.hidden_size
        return np.stack(got) if got else np.zeros((0, hidden), np.float32)  # type: ignore[arg-type]
