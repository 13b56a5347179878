"""A photo as uploaded, read or refused with a named 4xx; a probability map as the answer.

Photos go through the project's one image reader (:mod:`drywall_core.data.images`): EXIF
orientation applied, 16-bit and CMYK converted, the pixel limit (``DRYWALL_MAX_IMAGE_PIXELS``)
checked before decoding. What cannot be answered is refused by status: 400 empty or corrupt, 413
too many pixels, 415 not an image or not one still photo.
"""

from __future__ import annotations

import base64
import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from drywall_core.data.images import ImageTooLarge, decode_rgb
from drywall_core.data.masks import encode_rle
from drywall_core.field.predictions import mask_stats
from drywall_core.model.measure import measure_mask

MaskFormat = Literal["rle", "png", "polygons"]
MASK_FORMATS = ("rle", "png", "polygons")


class Refused(Exception):
    """A request the service will not answer: an HTTP status and one line naming the fault."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def read_photo(data: bytes, name: str, max_pixels: int) -> tuple[Image.Image, str, str | None]:
    """The uploaded photo as displayed (8-bit RGB), the sha256 of its bytes and its decoded format."""
    label = f"image '{name[:80]}'" if name else "image"
    if not data:
        raise Refused(400, f"{label}: empty file (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                frames = int(getattr(im, "n_frames", 1) or 1)
                if frames > 1:
                    raise Refused(415, f"{label}: animated or multi-page image ({frames} frames); send one still photo")
                return decode_rgb(im, max_pixels), digest, im.format
    except Refused:
        raise
    except UnidentifiedImageError:
        raise Refused(415, f"{label}: not an image this service reads (JPEG, PNG, WebP, TIFF, BMP)") from None
    except (ImageTooLarge, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Refused(413, f"{label}: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated files, broken headers
        raise Refused(400, f"{label}: corrupt or truncated ({exc})") from None


def png_bytes(mask: np.ndarray) -> bytes:
    """A binary mask as a {0, 255} PNG."""
    buf = io.BytesIO()
    Image.fromarray((mask.astype(np.uint8) * 255), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def polygons(mask: np.ndarray) -> list[list[float]]:
    """Outlines of the mask's regions, each ``[x0, y0, x1, y1, ...]`` in pixels (COCO polygon order)."""
    import contourpy

    padded = np.pad(mask.astype(np.float64), 1)
    lines = contourpy.contour_generator(z=padded, line_type="Separate").lines(0.5)
    # padded by one pixel; a pixel (i, j) spans [j, j + 1] x [i, i + 1] as in COCO polygons
    return [[round(float(v) - 0.5, 2) for pt in line for v in pt] for line in lines if len(line) >= 3]


def result(
    prompt: str, prob: np.ndarray, threshold: float, fmt: MaskFormat = "rle", scale: Scale | None = None
) -> dict[str, Any]:
    """One prompt's entry of the answer (the contract in ARCHITECTURE.md); with ``scale`` (a crack
    prompt) the mask's measurements too: count, and each crack's length and width."""
    mask = prob >= threshold
    stats = mask_stats(prob, threshold, entropy=False)
    if fmt == "png":
        encoded: dict[str, Any] = {
            "size": [int(mask.shape[0]), int(mask.shape[1])],
            "png_base64": base64.b64encode(png_bytes(mask)).decode(),
        }
    elif fmt == "polygons":
        encoded = {"size": [int(mask.shape[0]), int(mask.shape[1])], "polygons": polygons(mask)}
    else:
        encoded = encode_rle(mask)
    return {
        "prompt": prompt,
        "mask": encoded,
        "foreground_fraction": round(stats["fg_fraction"], 6),
        "mean_confidence": round(stats["mean_confidence"], 6),
        "uncertain_share": round(stats["uncertain_share"], 6),
        "threshold": threshold,
        **({} if scale is None else {"measurements": measurements(mask, scale)}),
    }


def measurements(mask: np.ndarray, scale: Scale) -> dict[str, Any]:
    """``drywall measure``'s line for the mask, less what the answer already says (file, size)."""
    out = measure_mask(mask, "", scale.px_per_mm, scale.min_area_px).to_dict()
    return {k: v for k, v in out.items() if k not in ("file", "width", "height")}


@dataclass(frozen=True)
class Scale:
    """How a crack prompt's mask is measured: pixels per mm (None: pixels only), smallest crack."""

    px_per_mm: float | None
    min_area_px: int
