"""Details for report pages: a square window of an image at its own resolution around what matters
in it, so that a defect a few pixels wide in a multi-megapixel image can be seen (MVTec AD 2,
docs/method.md §11), where a thumbnail of the whole image shrinks it away.

The window is centred on the largest connected region of the ground truth (8-connected, as the
PRO metric counts regions); an image without a defective pixel (a good image, or one without
ground truth) is centred on the anomaly map's highest value, the pixel that makes its image
score. Its side is the region's larger side plus a quarter of it on each side, at least
``DETAIL_MIN_WINDOW`` native pixels (so the zoom is at most DETAIL_SIDE / DETAIL_MIN_WINDOW), at
most the image's shorter side; it is moved inside the image where it would cross a border.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from utils.reports.figures import fit_square, heat_overlay, mask_picture

DETAIL_SIDE = 256        # px, the size details are encoded at and shown at
DETAIL_MIN_WINDOW = 64   # native px: the smallest window
MAX_ZOOM = DETAIL_SIDE // DETAIL_MIN_WINDOW
DETAIL_PICTURES = ("input", "heat map", "ground truth")  # what render_details returns, in this order
_REGION_SCALE = 1.5      # window side / the region's larger side
DEFECT_REGION = "largest defect region"
HIGHEST_VALUE = "highest map value"


@dataclass(frozen=True)
class Window:
    """A square of ``size`` native pixels with its top-left corner at (``x``, ``y``)."""

    x: int
    y: int
    size: int
    centred_on: str      # DEFECT_REGION or HIGHEST_VALUE

    def describe(self, hw: tuple[int, int]) -> str:
        """The window in words, for a caption: where it is in the image and why."""
        zoom = DETAIL_SIDE / self.size
        return (f"{self.size}×{self.size} px at x={self.x}, y={self.y} of {hw[1]}×{hw[0]} "
                f"(×{zoom:.2g}), around the {self.centred_on}")


def _place(centre: float, size: int, length: int) -> int:
    """The first index of ``size`` pixels centred on ``centre``, kept inside 0..length."""
    return int(min(max(round(centre - size / 2), 0), length - size))


def detail_window(anomaly_map: np.ndarray, mask: np.ndarray | None) -> Window:
    """The window of an image (its H×W anomaly map and boolean ground truth, both at its own size)."""
    h, w = anomaly_map.shape
    if mask is not None and mask.any():
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x0, y0, bw, bh = (int(v) for v in stats[k, :4])
        cx, cy, extent, why = x0 + bw / 2, y0 + bh / 2, max(bw, bh), DEFECT_REGION
    else:
        finite = np.where(np.isfinite(anomaly_map), anomaly_map, -np.inf)
        iy, ix = np.unravel_index(int(np.argmax(finite)), finite.shape)
        cx, cy, extent, why = ix + 0.5, iy + 0.5, 0, HIGHEST_VALUE
    size = min(h, w, max(DETAIL_MIN_WINDOW, math.ceil(extent * _REGION_SCALE)))
    return Window(_place(cx, size, w), _place(cy, size, h), size, why)


def render_details(rgb: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None,
                   map_range: tuple[float, float], side: int = DETAIL_SIDE) -> tuple[dict[str, np.ndarray], Window]:
    """The window of an image (H×W×3 uint8 RGB, its H×W map and ground truth at the same size) as
    side×side BGR pictures "input", "heat map" (on the category's fixed scale) and "ground truth"
    (white = defective), and the window."""
    if rgb.shape[:2] != anomaly_map.shape or (mask is not None and mask.shape != anomaly_map.shape):
        raise ValueError(f"render_details: image {rgb.shape[:2]}, map {anomaly_map.shape} and mask "
                         f"{None if mask is None else mask.shape} must have one size")
    win = detail_window(anomaly_map, mask)
    rows, cols = slice(win.y, win.y + win.size), slice(win.x, win.x + win.size)
    base = np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(rgb[rows, cols]), cv2.COLOR_RGB2BGR))
    truth = np.zeros((win.size, win.size), bool) if mask is None else mask[rows, cols]
    pictures = dict(zip(DETAIL_PICTURES, (base, heat_overlay(base, anomaly_map[rows, cols], map_range),
                                          mask_picture(truth))))
    return {name: fit_square(np.ascontiguousarray(p), side) for name, p in pictures.items()}, win


def outline_window(thumbnail: np.ndarray, window: Window, hw: tuple[int, int]) -> np.ndarray:
    """A copy of a square thumbnail of the whole H×W image with the window outlined on it."""
    side_y, side_x = thumbnail.shape[0] / hw[0], thumbnail.shape[1] / hw[1]
    x0, y0 = int(window.x * side_x), int(window.y * side_y)
    x1 = max(x0 + 2, int(math.ceil((window.x + window.size) * side_x)) - 1)
    y1 = max(y0 + 2, int(math.ceil((window.y + window.size) * side_y)) - 1)
    out = thumbnail.copy()
    cv2.rectangle(out, (x0, y0), (x1, y1), (0, 255, 255), 1)
    return out
