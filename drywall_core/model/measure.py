"""Measurements site teams act on: how many cracks, how long, how wide; how much of a wall is taped.

A crack mask is split into connected regions (8-connected); each region is one crack. Its length is
the length of its skeleton (scikit-image ``skeletonize``) by a corner-count estimator that holds at
any angle (:func:`skeleton_length`), after pruning the spurs that thinning leaves at wide ends,
plus, at each free end, the distance from the skeleton's end to the region's edge along its last
stretch (thinning stops about half a width short of each tip). Its width at a skeleton pixel is
twice the Euclidean distance to the background (scipy ``distance_transform_edt``) less half a pixel;
widths next to a junction of branches are left out, since a junction's centre lies further from
the edge than any branch is wide. Its mean width is its area over its length. A region smaller than
``min_area_px`` is a speck, not a crack, and is counted apart.

Lengths and widths are in pixels and, given a scale (``px_per_mm``: a setting, or per photo), in
millimetres. A taping mask is measured by the share of the photo it covers (``area_share``).
Measured on bands of known size at every 5 degrees, 1-12 px wide: length within 2.9%, width within
1 px (tests/unit/test_measure.py, bench/measure.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from drywall_core.base.errors import InputError

MIN_AREA_PX = 9
CORNER = 0.11  # length taken back per corner of a skeleton's staircase (skeleton_length)
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Crack:
    """One connected crack region."""

    length_px: float
    max_width_px: float
    mean_width_px: float
    area_px: int
    bbox: tuple[int, int, int, int]  # x, y, width, height


@dataclass(frozen=True)
class Measurement:
    """What one mask measures: its cracks (as lines) and the share of the photo it covers."""

    file: str
    width: int
    height: int
    area_px: int
    area_share: float
    n_cracks: int
    total_length_px: float
    max_width_px: float
    cracks: list[Crack] = field(default_factory=list)
    specks: int = 0  # regions under the minimum area, not counted as cracks
    px_per_mm: float | None = None

    def to_dict(self) -> dict[str, object]:
        """The ``drywall measure`` line (ARCHITECTURE.md): ``*_mm`` fields only where a scale is known."""
        out = asdict(self)
        out["cracks"] = [_crack_dict(c, self.px_per_mm) for c in self.cracks]
        if self.px_per_mm is None:
            out.pop("px_per_mm")
        else:
            out["total_length_mm"] = round(self.total_length_px / self.px_per_mm, 3)
            out["max_width_mm"] = round(self.max_width_px / self.px_per_mm, 3)
        return out


def _crack_dict(crack: Crack, px_per_mm: float | None) -> dict[str, object]:
    out: dict[str, object] = {**asdict(crack), "bbox": list(crack.bbox)}
    if px_per_mm is not None:
        for name in ("length", "max_width", "mean_width"):
            out[f"{name}_mm"] = round(getattr(crack, f"{name}_px") / px_per_mm, 3)
    return out


_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _shifted(s: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``out[y, x] = s[y + dy, x + dx]`` (False beyond the border)."""
    out = np.zeros_like(s)
    h, w = s.shape
    out[max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)] = s[
        max(dy, 0) : h - max(-dy, 0), max(dx, 0) : w - max(-dx, 0)
    ]
    return out


def skeleton_length(skeleton: np.ndarray) -> float:
    """Length of a one-pixel-wide skeleton: 1 per orthogonal step, sqrt 2 per diagonal step, less
    0.11 per corner (a change of direction). Steps alone overstate a digital line between the axes
    (8% at 17 degrees: its staircase is longer than the line); the corner term, as in Vossepoel &
    Smeulders' corner-count estimator, takes that back: exact at 0 and 45 degrees and within 2% in
    between. A diagonal step that a corner pixel already links is not counted (no triangles)."""
    s = np.asarray(skeleton, dtype=bool)
    orth = int((s[:, :-1] & s[:, 1:]).sum() + (s[:-1, :] & s[1:, :]).sum())
    down = s[:-1, :-1] & s[1:, 1:] & ~s[:-1, 1:] & ~s[1:, :-1]
    up = s[:-1, 1:] & s[1:, :-1] & ~s[:-1, :-1] & ~s[1:, 1:]
    diag = int(down.sum() + up.sum())
    near = {d: _shifted(s, *d) for d in _OFFSETS}
    count = sum(v.astype(np.int8) for v in near.values())
    straight = np.zeros_like(s)
    for dy, dx in _OFFSETS[:4]:
        straight |= near[(dy, dx)] & near[(-dy, -dx)]
    corners = int((s & (count == 2) & ~straight).sum())
    return orth + math.sqrt(2) * diag - CORNER * corners


def prune_spurs(skeleton: np.ndarray, distance: np.ndarray, rounds: int = 3) -> np.ndarray:
    """The skeleton without its spurs: a branch from a free end to a junction no longer than the
    region's radius there (1.5 x the distance to the edge, + 1) is an artefact of thinning a wide
    end or corner, not a branch of the crack. Each spur would add its own length and tip."""
    s = skeleton.copy()
    h, w = s.shape
    for _ in range(rounds):
        near = _neighbours(s) * s
        removed = False
        for end in zip(*np.nonzero(s & (near == 1)), strict=True):
            path, junction = _walk_to_junction(s, near, end, h, w)
            if junction is not None and len(path) <= 1.5 * distance[junction] + 1:
                for y, x in path:
                    s[y, x] = False
                removed = True
        if not removed:
            break
    return s


def _walk_to_junction(
    s: np.ndarray, near: np.ndarray, start: tuple[int, int], h: int, w: int, cap: int = 512
) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    """The pixels from a free end up to (not including) the first junction, and that junction."""
    path = [start]
    seen = {start}
    cur = start
    while len(path) < cap:
        nbrs = [
            (cur[0] + dy, cur[1] + dx)
            for dy, dx in _OFFSETS
            if 0 <= cur[0] + dy < h and 0 <= cur[1] + dx < w and s[cur[0] + dy, cur[1] + dx]
        ]
        nbrs = [n for n in nbrs if n not in seen]
        junctions = [n for n in nbrs if near[n] >= 3]
        if junctions:
            return path, junctions[0]
        if len(nbrs) != 1:
            return path, None
        cur = nbrs[0]
        path.append(cur)
        seen.add(cur)
    return path, None


def _neighbours(skeleton: np.ndarray) -> np.ndarray:
    s = skeleton.astype(np.uint8)
    return ndimage.convolve(s, _EIGHT.astype(np.uint8), mode="constant") - s


COARSE_RADIUS = 64  # a region this many px from edge to middle, x2 or more, is measured on a coarser grid


def measure_coarse(region: np.ndarray, k: int, offset: tuple[int, int]) -> Crack:
    """A region at least 4 x ``COARSE_RADIUS`` (256 px) wide -- a blob or a whole wall, no crack --
    measured on a k-times coarser grid (a block is in the region when most of it is) and scaled
    back: thinning peels a layer a pass, so a 640 x 640 block took 0.5 s at full size (the service's
    answer and every evaluation pay it when a model calls a whole photo a crack)."""
    h, w = region.shape
    grid = np.pad(region, ((0, -h % k), (0, -w % k))).reshape((h + -h % k) // k, k, (w + -w % k) // k, k)
    coarse = np.pad(grid.mean(axis=(1, 3)) >= 0.5, 1)
    c = measure_crack(coarse, ndimage.distance_transform_edt(coarse), (0, 0))
    area = int(region.sum())
    length = c.length_px * k
    return Crack(
        length_px=round(length, 2),
        max_width_px=round(c.max_width_px * k, 2),
        mean_width_px=round(min(area / max(length, 1.0), c.max_width_px * k), 2),
        area_px=area,
        bbox=_bbox(region, offset),
    )


def _bbox(region: np.ndarray, offset: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x, y, width, height) of a region's pixels in the whole mask."""
    ys, xs = np.nonzero(region)
    return int(xs.min()) + offset[1], int(ys.min()) + offset[0], int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1


def measure_crack(region: np.ndarray, distance: np.ndarray, offset: tuple[int, int]) -> Crack:
    """One region (a boolean crop) and the distance map over the same crop."""
    from skimage.morphology import skeletonize

    skeleton = skeletonize(region)
    if not skeleton.any():  # a region too thin to thin further is its own skeleton
        skeleton = region.copy()
    skeleton = prune_spurs(skeleton, distance)
    if skeleton.sum() > 1:  # a pruned fork leaves its junction's knot of pixels: thin it to a free end
        skeleton = skeletonize(skeleton)
    near = _neighbours(skeleton) * skeleton
    if skeleton.sum() == 1:  # a blob: its skeleton is a point, its length its diameter
        tips = 2.0 * max(float(distance[skeleton].max()) - 0.5, 0.0)
    else:
        tips = sum(
            _tip(region, skeleton, near, end, distance) for end in zip(*np.nonzero(skeleton & (near == 1)), strict=True)
        )
    length = skeleton_length(skeleton) + tips
    widths = _widths(skeleton, near, distance)
    return Crack(
        length_px=round(float(length), 2),
        max_width_px=round(float(widths.max()), 2),
        mean_width_px=round(min(float(region.sum()) / max(length, 1.0), float(widths.max())), 2),
        area_px=int(region.sum()),
        bbox=_bbox(region, offset),
    )


def _tip(
    region: np.ndarray, skeleton: np.ndarray, near: np.ndarray, end: tuple[int, int], distance: np.ndarray
) -> float:
    """From a free end of the skeleton to the region's edge, along the skeleton's last stretch
    (about a radius long): thinning stops short of each tip, by half a width at a square end."""
    h, w = region.shape
    back = max(3, int(round(float(distance[end]))))
    path, _ = _walk_to_junction(skeleton, near, end, h, w, cap=back + 1)
    if len(path) < 2:
        return max(float(distance[end]) - 0.5, 0.0)
    dy, dx = end[0] - path[-1][0], end[1] - path[-1][1]
    norm = math.hypot(dy, dx)
    dy, dx = dy / norm, dx / norm
    t = 0.0
    while True:
        y, x = int(round(end[0] + (t + 0.25) * dy)), int(round(end[1] + (t + 0.25) * dx))
        if not (0 <= y < h and 0 <= x < w and region[y, x]):
            return t + 0.125  # the edge lies within the last quarter step: its middle
        t += 0.25


def _widths(skeleton: np.ndarray, near: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """2 x distance - 1/2 along the skeleton, away from junctions (where 3+ branches meet): the
    skeleton of an even width lies half a pixel off the centre line, so this is within 1/2 px of
    either parity."""
    junctions = skeleton & (near >= 3)
    keep = skeleton
    if junctions.any():
        reach = ndimage.distance_transform_edt(~junctions)
        radius = float(distance[junctions].max())
        away = skeleton & (reach > radius + 1)
        keep = away if away.any() else skeleton
    return np.maximum(2.0 * distance[keep] - 0.5, 1.0)


def measure_mask(
    mask: np.ndarray, name: str = "", px_per_mm: float | None = None, min_area_px: int = MIN_AREA_PX
) -> Measurement:
    """Measure a mask (non-zero pixels are the object)."""
    if px_per_mm is not None and not px_per_mm > 0:
        raise InputError(f"px_per_mm must be positive, not {px_per_mm}")
    fg = np.asarray(mask) > 0
    if fg.ndim != 2:
        raise InputError(f"{name or 'mask'}: a mask is one channel, this one has shape {fg.shape}")
    labels, n = ndimage.label(fg, structure=_EIGHT)
    cracks, specks = [], 0
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        region = labels[box] == i
        if region.sum() < min_area_px:
            specks += 1
            continue
        padded = np.pad(region, 1)
        distance = ndimage.distance_transform_edt(padded)
        offset = (box[0].start - 1, box[1].start - 1)
        k = int(float(distance.max()) // COARSE_RADIUS)
        cracks.append(measure_crack(padded, distance, offset) if k < 2 else measure_coarse(padded, k, offset))
    cracks.sort(key=lambda c: -c.length_px)
    return Measurement(
        file=name,
        width=int(fg.shape[1]),
        height=int(fg.shape[0]),
        area_px=int(fg.sum()),
        area_share=round(float(fg.mean()), 6) if fg.size else 0.0,
        n_cracks=len(cracks),
        total_length_px=round(sum(c.length_px for c in cracks), 2),
        max_width_px=max((c.max_width_px for c in cracks), default=0.0),
        cracks=cracks,
        specks=specks,
        px_per_mm=px_per_mm,
    )


def read_mask(path: Path) -> np.ndarray:
    """A mask file as a boolean array; a file that is no image is named and refused."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im.convert("L") if im.mode not in ("1", "L", "I", "I;16", "F") else im)
    except FileNotFoundError:
        raise InputError(f"{path}: mask not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(f"{path}: not a readable mask image ({exc})") from None
    return arr > 0


def measure_file(path: Path, px_per_mm: float | None = None, min_area_px: int = MIN_AREA_PX) -> Measurement:
    return measure_mask(read_mask(path), str(path), px_per_mm, min_area_px)
