"""The report pages' details (utils/reports/crops.py): a square of an image at its own size around
its largest defect region, or around the map's highest value where it has none; the pictures
are that square's own pixels, enlarged without blending."""
from __future__ import annotations

import numpy as np
import pytest

from utils.reports.crops import (
    DEFECT_REGION,
    DETAIL_MIN_WINDOW,
    DETAIL_SIDE,
    HIGHEST_VALUE,
    detail_window,
    outline_window,
    render_details,
)


def _inside(win, y0, y1, x0, x1) -> bool:
    """Whether the rows y0..y1-1 and columns x0..x1-1 lie in the window."""
    return win.y <= y0 and y1 <= win.y + win.size and win.x <= x0 and x1 <= win.x + win.size


def test_the_window_is_centred_on_the_largest_of_several_regions():
    amap = np.zeros((600, 900), np.float32)
    mask = np.zeros(amap.shape, bool)
    mask[50:54, 60:66] = True        # a 4 x 6 region
    mask[400:410, 700:712] = True    # a 10 x 12 region: the larger
    amap[100, 100] = 5.0             # the highest value elsewhere does not matter when there is a defect
    win = detail_window(amap, mask)
    assert win.centred_on == DEFECT_REGION
    assert win.size == DETAIL_MIN_WINDOW  # 1.5 x 12 = 18 native px is below the smallest window
    assert _inside(win, 400, 410, 700, 712)
    assert abs((win.y + win.size / 2) - 405) <= 1 and abs((win.x + win.size / 2) - 706) <= 1


def test_diagonal_pixels_are_one_region():
    """8-connected, as the PRO metric counts regions: a diagonal line of 30 pixels outweighs a 5 x 5 block."""
    mask = np.zeros((300, 300), bool)
    idx = np.arange(30)
    mask[100 + idx, 150 + idx] = True
    mask[10:15, 10:15] = True
    win = detail_window(np.zeros(mask.shape, np.float32), mask)
    assert _inside(win, 100, 130, 150, 180) and not _inside(win, 10, 15, 10, 15)


def test_a_large_region_gets_a_window_half_as_large_again():
    mask = np.zeros((1000, 1200), bool)
    mask[300:500, 500:600] = True  # 200 x 100
    win = detail_window(np.zeros(mask.shape, np.float32), mask)
    assert win.size == 300 and _inside(win, 300, 500, 500, 600)


def test_a_region_at_the_border_keeps_the_window_inside_the_image():
    mask = np.zeros((480, 640), bool)
    mask[470:480, 0:5] = True  # bottom-left corner
    win = detail_window(np.zeros(mask.shape, np.float32), mask)
    assert (win.x, win.y + win.size) == (0, 480) and _inside(win, 470, 480, 0, 5)


def test_without_defect_the_window_holds_the_highest_value():
    amap = np.random.default_rng(0).random((700, 500)).astype(np.float32)
    amap[650, 20] = 2.0
    amap[3, 3] = np.nan  # an undefined value is not the highest
    for mask in (None, np.zeros(amap.shape, bool)):
        win = detail_window(amap, mask)
        assert win.centred_on == HIGHEST_VALUE and win.size == DETAIL_MIN_WINDOW
        assert _inside(win, 650, 651, 20, 21)


def test_an_image_smaller_than_the_window_is_shown_whole():
    win = detail_window(np.zeros((40, 57), np.float32), None)
    assert (win.y, win.size) == (0, 40) and 0 <= win.x <= 57 - 40


def test_the_pictures_are_the_windows_pixels_enlarged_without_blending():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (500, 700, 3), dtype=np.uint8)
    mask = np.zeros((500, 700), bool)
    mask[200:203, 300:302] = True  # a 3 x 2 defect: the window is the smallest, shown 4x
    amap = np.zeros((500, 700), np.float32)
    pictures, win = render_details(rgb, amap, mask, (0.0, 1.0))
    zoom = DETAIL_SIDE // DETAIL_MIN_WINDOW
    assert list(pictures) == ["input", "heat map", "ground truth"]
    assert all(p.shape == (DETAIL_SIDE, DETAIL_SIDE, 3) and p.dtype == np.uint8 for p in pictures.values())
    native = rgb[win.y:win.y + win.size, win.x:win.x + win.size]
    assert np.array_equal(pictures["input"][::zoom, ::zoom], native[..., ::-1])  # BGR, one native pixel per block
    assert np.array_equal(pictures["input"][zoom - 1::zoom, zoom - 1::zoom], native[..., ::-1])
    white = pictures["ground truth"][::zoom, ::zoom, 0] == 255
    assert np.array_equal(white, mask[win.y:win.y + win.size, win.x:win.x + win.size])
    assert white.sum() == 6
    assert "(×4)" in win.describe((500, 700)) and "of 700×500" in win.describe((500, 700))


def test_mismatched_sizes_are_refused():
    with pytest.raises(ValueError, match="one size"):
        render_details(np.zeros((10, 12, 3), np.uint8), np.zeros((10, 11), np.float32), None, (0.0, 1.0))


def test_the_outline_marks_the_window_on_the_thumbnail():
    thumb = np.zeros((128, 128, 3), np.uint8)
    mask = np.zeros((1024, 2048), bool)
    mask[512:520, 1024:1030] = True
    win = detail_window(np.zeros(mask.shape, np.float32), mask)
    marked = outline_window(thumb, win, mask.shape)
    ys, xs = np.nonzero(marked.any(axis=2))
    # the window's 64 native px are 8 rows of a 1024-row image and 4 columns of a 2048-column one
    assert ys.min() == pytest.approx(win.y / 8, abs=1) and xs.min() == pytest.approx(win.x / 16, abs=1)
    assert ys.max() - ys.min() in (7, 8) and xs.max() - xs.min() in (3, 4)
    assert not thumb.any()  # the thumbnail itself is left as it was
