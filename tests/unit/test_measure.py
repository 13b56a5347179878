"""Crack measurements on masks of known geometry: length within 3%, width within 1 px."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from drywall_core.base.errors import InputError
from drywall_core.model.measure import measure_file, measure_mask, skeleton_length


def band(shape: tuple[int, int], start: tuple[float, float], end: tuple[float, float], width: float) -> np.ndarray:
    """A straight band of the given width between two points (x, y): pixels whose centre is within
    width/2 of the segment, measured across it, and between its ends along it."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    (x0, y0), (x1, y1) = start, end
    dx, dy = x1 - x0, y1 - y0
    length = math.hypot(dx, dy)
    ux, uy = dx / length, dy / length
    along = (xx - x0) * ux + (yy - y0) * uy
    across = np.abs(-(xx - x0) * uy + (yy - y0) * ux)
    return (along >= 0) & (along <= length) & (across <= width / 2)


def close(value: float, truth: float, rel: float = 0.03) -> bool:
    return abs(value - truth) <= rel * truth


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 12])
def test_straight_line_of_known_length_and_width_at_every_angle(width: int) -> None:
    length, c = 240.0, 200.0
    for angle in range(0, 180, 5):
        a = math.radians(angle)
        start = (c - length / 2 * math.cos(a), c - length / 2 * math.sin(a))
        end = (c + length / 2 * math.cos(a), c + length / 2 * math.sin(a))
        m = measure_mask(band((400, 400), start, end, width))
        assert m.n_cracks == 1, angle
        crack = m.cracks[0]
        assert close(crack.length_px, length), (angle, crack.length_px)
        assert abs(crack.mean_width_px - width) <= 1.0, (angle, crack)
        assert abs(crack.max_width_px - width) <= 1.0, (angle, crack)


@pytest.mark.parametrize("width", [260, 400])
def test_a_region_wider_than_any_crack_is_measured_on_a_coarser_grid_within_2_percent(width: int) -> None:
    """Thinning a 400 px wide region at full size takes a pass per pixel layer; on the coarse grid
    its length and width stay within 2%."""
    from bench.measure import band

    for angle in (0, 15, 30, 45, 60, 75, 90, 120, 165):
        (crack,) = measure_mask(band((1100, 1100), angle, width, 800)).cracks
        assert crack.length_px == pytest.approx(800, rel=0.02), angle
        assert crack.max_width_px == pytest.approx(width, rel=0.02), angle
    whole = measure_mask(np.ones((640, 640), bool))
    assert whole.n_cracks == 1 and whole.max_width_px == pytest.approx(640, rel=0.01)


def test_branching_crack_sums_its_branches_and_keeps_its_width() -> None:
    shape, width = (400, 400), 5
    trunk = band(shape, (50, 200), (350, 200), width)
    branch = band(shape, (200, 200), (300, 60), width)
    m = measure_mask(trunk | branch)
    truth = 300 + math.hypot(100, 140) - width / 2  # the branch starts inside the trunk
    assert m.n_cracks == 1
    assert close(m.total_length_px, truth), (m.total_length_px, truth)
    assert abs(m.cracks[0].max_width_px - width) <= 1.0
    assert abs(m.cracks[0].mean_width_px - width) <= 1.0


def test_separate_cracks_are_counted_apart_and_specks_are_not_cracks() -> None:
    shape = (300, 300)
    mask = band(shape, (20, 50), (280, 50), 3) | band(shape, (20, 200), (120, 200), 7)
    mask[150:152, 150:152] = True  # a 4-pixel speck
    m = measure_mask(mask, px_per_mm=2.0)
    assert m.n_cracks == 2 and m.specks == 1
    assert [round(c.length_px, -1) for c in m.cracks] == [260, 100]  # longest first
    assert close(m.total_length_px, 360)
    out = m.to_dict()
    assert out["total_length_mm"] == pytest.approx(m.total_length_px / 2, abs=1e-3)
    assert out["cracks"][1]["max_width_mm"] == pytest.approx(m.cracks[1].max_width_px / 2, abs=1e-3)
    assert m.area_share == pytest.approx(mask.mean(), abs=1e-6)


def test_empty_mask_measures_nothing_and_needs_no_scale() -> None:
    m = measure_mask(np.zeros((50, 80), np.uint8), "empty.png")
    out = m.to_dict()
    assert out["n_cracks"] == 0 and out["total_length_px"] == 0 and out["cracks"] == []
    assert "total_length_mm" not in out and "px_per_mm" not in out


def test_skeleton_length_holds_between_the_axes() -> None:
    xs = np.arange(41)
    line = np.zeros((21, 41), bool)
    line[xs // 2, xs] = True  # a digital line of slope 1/2: a staircase of steps and diagonals
    truth = math.hypot(40, 20)
    steps = 20 + 20 * math.sqrt(2)  # what counting 1 and sqrt 2 per step gives
    assert steps > 1.07 * truth
    assert close(skeleton_length(line), truth, rel=0.02)
    assert skeleton_length(np.eye(5, dtype=bool)) == pytest.approx(4 * math.sqrt(2))
    tri = np.zeros((3, 3), bool)
    tri[[0, 0, 1], [0, 1, 1]] = True  # a corner pixel links the diagonal: two steps, not three
    assert skeleton_length(tri) == pytest.approx(2 - 0.11 * 3)  # each of the three pixels turns


def test_bad_scale_and_bad_files_are_refused(tmp_path) -> None:
    with pytest.raises(InputError, match="px_per_mm"):
        measure_mask(np.ones((4, 4)), px_per_mm=0)
    bad = tmp_path / "notes.png"
    bad.write_text("not a png")
    with pytest.raises(InputError, match="notes.png: not a readable mask"):
        measure_file(bad)


def test_measure_command_prints_a_json_line_per_mask(tmp_path, cli) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray((band((120, 200), (10, 60), (190, 60), 4) * 255).astype(np.uint8)).save(a)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(b)
    res = cli("measure", a, b, "--px-per-mm", "4")
    assert res.code == 0, res.err
    lines = [json.loads(line) for line in res.out.splitlines()]
    assert [line["file"] for line in lines] == [str(a), str(b)]
    assert lines[0]["n_cracks"] == 1 and close(lines[0]["total_length_px"], 180)
    assert lines[0]["total_length_mm"] == pytest.approx(lines[0]["total_length_px"] / 4, abs=1e-3)
    missing = cli("measure", a, tmp_path / "gone.png")
    assert missing.code == 2 and "gone.png: mask not found" in missing.err
    assert missing.out == ""  # every mask is read before a line is printed: no partial output
    assert cli("measure", a, "--px-per-mm", "0").code == 2
