"""Reading images as people take them: one function every stage decodes through.

Phone photos of walls are mostly stored sideways with an EXIF orientation tag; 16-bit and float
images (scanners, HDR exports, PNG from inspection tools) would saturate if converted naively; and
a decompression bomb must be refused before it is decoded. Prediction, the activation cache,
evaluation, drift and validation all read images here, so they all see the image as displayed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

_HIGH_DEPTH = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


class ImageTooLarge(ValueError):
    """The image has more pixels than the configured limit (``DRYWALL_MAX_IMAGE_PIXELS``)."""


def displayed_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF orientation is applied, without decoding the pixels."""
    w, h = im.size
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block means "as stored"
        orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block means "as stored"
        return 1


def upright(image: Path, folder: Path) -> Path:
    """``image`` as displayed: an EXIF-rotated photo is written upright (no orientation tag) into
    ``folder``; any other is returned as it is. Whoever receives the photo (Roboflow) then sees the
    same pixels, at the same size, as the masks and polygons made from it."""
    with Image.open(image) as im:
        if _orientation(im) in (1, 0):
            return Path(image)
        turned = ImageOps.exif_transpose(im)
        exif = turned.getexif()
        exif.pop(0x0112, None)
        Path(folder).mkdir(parents=True, exist_ok=True)
        out = Path(folder) / Path(image).name
        fmt = im.format or "JPEG"
        turned.save(out, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
        return out


def check_pixels(im: Image.Image, max_pixels: int) -> None:
    w, h = im.size
    if w * h > max_pixels:
        raise ImageTooLarge(f"dimensions {w}x{h} over the {max_pixels}-pixel limit")


def to_8bit_rgb(im: Image.Image) -> Image.Image:
    """RGB with 8 bits per channel; high-bit-depth and float images are scaled, not clipped."""
    if im.mode == "RGB":
        return im
    scale = _HIGH_DEPTH.get(im.mode)
    if scale is None and im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = float(arr.max()) if arr.size else 0.0
        ranges = (1.0, 255.0, 65535.0) if im.mode == "F" else (255.0, 65535.0)
        scale = next((r for r in ranges if top <= r), top)
    if scale is not None:
        arr = np.asarray(im, dtype=np.float64)
        gray = np.clip(np.rint(arr * (255.0 / scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return im.convert("RGB")


def pixel_limit(max_pixels: int | None = None) -> int:
    """The explicit limit, else ``DRYWALL_MAX_IMAGE_PIXELS``: one limit for every reader."""
    if max_pixels is not None:
        return max_pixels
    from drywall_core.base.config import get_settings

    return get_settings().max_image_pixels


def decode_rgb(im: Image.Image, max_pixels: int | None = None, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode an opened image as displayed (EXIF orientation applied), 8-bit RGB, within the pixel limit.

    ``draft`` lets JPEG decode at a reduced scale of at least that size (drift features).
    """
    check_pixels(im, pixel_limit(max_pixels))
    if draft is not None:
        im.draft("RGB", draft)
    im.load()
    return to_8bit_rgb(ImageOps.exif_transpose(im))


def open_rgb(path: Path | str, max_pixels: int | None = None, draft: tuple[int, int] | None = None) -> Image.Image:
    """:func:`decode_rgb` of the file at ``path``; raises :class:`ImageTooLarge`, ``OSError`` or PIL's
    errors for unreadable files."""
    with Image.open(path) as im:
        return decode_rgb(im, max_pixels, draft)
