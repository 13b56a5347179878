"""Shadow evaluation: candidate and champion on the latest field photos, before promotion.

No labels are needed: the question is how much the candidate would change what site teams see.
Per prompt: agreement (mean IoU between the two models' masks, each at its own threshold; two
empty masks agree fully) and the share of photos where they disagree strongly (IoU below a cut).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from drywall_core.base.fsutil import inside
from drywall_core.field.predictions import FieldImage, open_images
from drywall_core.model.load import LoadedModel
from drywall_core.model.metrics import iou
from drywall_core.model.runtime import probabilities


def latest_field_images(settings: Any, n: int, dest: Path) -> list[FieldImage]:
    """The ``n`` newest field photos: in the bucket under the field prefix (by LastModified,
    downloaded to ``dest``), or in ``$DRYWALL_HOME/field-images`` (by mtime)."""
    from drywall_core.field.drift import IMAGE_EXTENSIONS

    if n <= 0:
        return []
    if settings.s3_bucket:
        from drywall_core.base.storage import s3_client_from

        client = s3_client_from(settings)
        objects = []
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=settings.s3_bucket, Prefix=settings.field_images_prefix
        )
        for page in pages:
            objects += [o for o in page.get("Contents", []) if Path(o["Key"]).suffix.lower() in IMAGE_EXTENSIONS]
        newest = sorted(objects, key=lambda o: (o["LastModified"], o["Key"]), reverse=True)[:n]
        out = []
        for o in newest:
            local = inside(Path(dest), o["Key"], "field image key")  # a key from outside stays in dest
            local.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(settings.s3_bucket, o["Key"], str(local))
            out.append(FieldImage(local, o["Key"]))
        return out
    folder = Path(settings.field_images_dir)
    if not folder.is_dir():
        return []
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    newest = sorted(files, key=lambda p: (p.stat().st_mtime, str(p)), reverse=True)[:n]
    return [FieldImage(p, p.relative_to(folder).as_posix()) for p in newest]


def shadow_compare(
    candidate: LoadedModel,
    champion: LoadedModel,
    images: Sequence[FieldImage],
    prompts: Sequence[str],
    strong_iou: float = 0.5,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Per prompt: mean IoU between the two models' masks and the share of strong disagreements."""
    ious: dict[str, list[float]] = {p: [] for p in prompts}
    skipped = []
    for start in range(0, len(images), batch_size):
        opened, unreadable = open_images(images[start : start + batch_size])
        skipped += unreadable
        if not opened:
            continue
        batch = [pil for _, pil in opened]
        cand, champ = probabilities(candidate, batch, prompts), probabilities(champion, batch, prompts)
        for p in prompts:
            tc, th = candidate.threshold_for(p), champion.threshold_for(p)
            ious[p] += [iou(a[p] >= tc, b[p] >= th) for a, b in zip(cand, champ, strict=True)]
    per_prompt = {
        p: {
            "images": len(v),
            "agreement": float(np.mean(v)),
            "strong_disagreement_share": float(np.mean([x < strong_iou for x in v])),
        }
        for p, v in ious.items()
        if v
    }
    return {"images": len(images) - len(skipped), "strong_iou": strong_iou, "prompts": per_prompt, "skipped": skipped}
