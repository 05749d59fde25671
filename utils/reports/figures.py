"""Pictures for results: per-sample panels, ROC / PRO curves and grids of panels.

Everything is drawn with OpenCV and numpy (no matplotlib) and written as PNG.
Images are BGR uint8 arrays, as OpenCV uses them. The `render_*` functions
return the picture; the `save_*` functions write it and return None.

Conventions of the model's space (docs/method.md §1): rgb channels are in
[-1, 1]; the depth channel is normalised depth with 0 = missing.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import cv2
import numpy as np

from models.modes import IMAGE_CHANNELS, has_depth, has_rgb
from utils.core.atomic import atomic_write_bytes

_MIN_SIDE = 128  # smaller panels are upscaled so that captions fit
_CAPTION_H = 22
_GAP = 4
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_DARK = (40, 40, 40)
_WHITE = (255, 255, 255)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def _to_numpy(x: Any) -> np.ndarray:
    """np.asarray that also accepts torch tensors (on any device)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Encode and write atomically, so a crash never leaves a truncated PNG."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"could not encode a PNG for {path}")
    atomic_write_bytes(path, buf.tobytes())


def _put_text(img: np.ndarray, text: str, org: tuple[int, int], max_width: int,
              color: tuple[int, int, int] = _WHITE, scale: float = 0.5,
              align: str = "left") -> None:
    """Draw text with its baseline at org, shrinking the font until it fits max_width."""
    thickness = 1
    while True:
        (w, _), _ = cv2.getTextSize(text, _FONT, scale, thickness)
        if w <= max_width or scale <= 0.3:
            break
        scale *= 0.9
    x, y = org
    if align == "center":
        x -= w // 2
    elif align == "right":
        x -= w
    cv2.putText(img, text, (int(x), int(y)), _FONT, scale, color, thickness, cv2.LINE_AA)


def _rgb_to_bgr8(rgb: np.ndarray) -> np.ndarray:
    """[3,H,W] in [-1, 1] -> [H,W,3] BGR uint8."""
    v = np.clip((rgb.astype(np.float32) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(v[::-1].transpose(1, 2, 0))


def _depth_range(depth: np.ndarray) -> tuple[float, float]:
    """Min and max of the valid (non-zero) depth; (0, 1) when there is none."""
    valid = depth[depth != 0]
    if valid.size == 0:
        return 0.0, 1.0
    lo, hi = float(valid.min()), float(valid.max())
    return (lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)


def _depth_to_uint8(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Stretch [lo, hi] to 1..255; missing depth (exactly 0) stays 0."""
    v = np.clip((depth.astype(np.float32) - lo) / (hi - lo), 0, 1) * 254 + 1
    return np.where(depth != 0, v, 0).round().astype(np.uint8)


def _depth_to_bgr(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Colour-mapped depth (VIRIDIS, distinct from the JET heat-map); missing is black."""
    coloured = cv2.applyColorMap(_depth_to_uint8(depth, lo, hi), cv2.COLORMAP_VIRIDIS)
    coloured[depth == 0] = 0
    return coloured


def heat_overlay(base: np.ndarray, anomaly_map: np.ndarray,
                  map_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """JET heat-map of the map on a FIXED scale, blended half-and-half over base.

    A fixed scale (not per-image min-max) keeps panels of different samples
    comparable: a normal image stays blue. The evaluation passes one range per
    category (its maps' minimum to maximum), the default is 0..1.
    """
    lo, hi = float(map_range[0]), float(map_range[1])
    span = hi - lo if hi > lo else 1.0
    levels = np.clip((np.nan_to_num(anomaly_map.astype(np.float32)) - lo) / span, 0, 1) * 255
    heat = cv2.applyColorMap(levels.round().astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(base, 0.5, heat, 0.5, 0)


def _caption(panel: np.ndarray, text: str) -> np.ndarray:
    """Add a dark caption strip with `text` on top of a panel."""
    strip = np.full((_CAPTION_H, panel.shape[1], 3), _DARK, dtype=np.uint8)
    _put_text(strip, text, (4, _CAPTION_H - 7), panel.shape[1] - 8, scale=0.45)
    return np.vstack([strip, panel])


def _hstack(panels: Sequence[np.ndarray], gap: int, fill: tuple[int, int, int]) -> np.ndarray:
    """Panels of equal height side by side, `gap` pixels apart."""
    h = panels[0].shape[0]
    spacer = np.full((h, gap, 3), fill, dtype=np.uint8)
    parts: list[np.ndarray] = []
    for i, p in enumerate(panels):
        if i:
            parts.append(spacer)
        parts.append(p)
    return np.hstack(parts)


# ---------------------------------------------------------------------------
# Per-sample panels
# ---------------------------------------------------------------------------

def render_panel(
    image: Any,
    anomaly_map: Any,
    gt_mask: Any | None,
    reconstruction: Any,
    mode: str,
    score: float | None = None,
    title: str | None = None,
    map_range: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """One BGR picture: input | ground truth | heat-map overlay | reconstruction [| depth panels].

    image, reconstruction: float [C,H,W] in the model's space (C = 3 rgb,
    1 d, 4 rgbd). anomaly_map: [H,W] (or [1,H,W]), drawn on the fixed scale
    map_range (default 0..1). gt_mask: [H,W] or None (a black panel, captioned as missing).
    d: the input and reconstruction panels show depth colour-mapped with
    one range, and the overlay is drawn on the depth in grey. rgbd: the rgb
    panels, then depth input and depth reconstruction.
    """
    if mode not in IMAGE_CHANNELS:
        raise ValueError(f"mode must be one of {sorted(IMAGE_CHANNELS)}, got {mode!r}")
    image = _to_numpy(image).astype(np.float32)
    reconstruction = _to_numpy(reconstruction).astype(np.float32)
    amap = _to_numpy(anomaly_map).astype(np.float32)
    if amap.ndim == 3 and amap.shape[0] == 1:
        amap = amap[0]
    channels = IMAGE_CHANNELS[mode]
    if image.ndim != 3 or image.shape[0] != channels or reconstruction.shape != image.shape:
        raise ValueError(f"mode {mode!r} needs image and reconstruction of shape [{channels},H,W], "
                         f"got {image.shape} and {reconstruction.shape}")
    h, w = image.shape[1:]
    if amap.shape != (h, w):
        raise ValueError(f"anomaly map {amap.shape} does not match the image size {(h, w)}")

    if gt_mask is None:
        gt = np.zeros((h, w, 3), dtype=np.uint8)
        gt_name = "ground truth: none"
    else:
        g = _to_numpy(gt_mask).astype(np.float32).reshape(h, w)
        gt = np.repeat(np.where(g > 0.5, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
        gt_name = "ground truth"

    heat_name = f"anomaly map ({map_range[0]:.3g}..{map_range[1]:.3g})"
    depth_panels: list[tuple[np.ndarray, str]] = []
    if has_depth(mode):
        depth_in, depth_rec = image[-1], reconstruction[-1]
        lo, hi = _depth_range(depth_in)  # one range, so input and recon compare
        depth_panels = [(_depth_to_bgr(depth_in, lo, hi), "depth input"),
                        (_depth_to_bgr(depth_rec, lo, hi), "depth reconstruction")]
    if not has_rgb(mode):
        grey = _depth_to_uint8(depth_in, lo, hi)
        base = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        panels = [depth_panels[0], (gt, gt_name),
                  (heat_overlay(base, amap, map_range), heat_name), depth_panels[1]]
    else:
        rgb_in = _rgb_to_bgr8(image[:3])
        panels = [(rgb_in, "input"), (gt, gt_name),
                  (heat_overlay(rgb_in, amap, map_range), heat_name),
                  (_rgb_to_bgr8(reconstruction[:3]), "reconstruction")] + depth_panels

    # Nearest-neighbour upscaling keeps pixels honest and makes room for text.
    factor = math.ceil(_MIN_SIDE / min(h, w)) if min(h, w) < _MIN_SIDE else 1
    rendered = []
    for img, name in panels:
        if factor > 1:
            img = cv2.resize(img, (w * factor, h * factor), interpolation=cv2.INTER_NEAREST)
        rendered.append(_caption(img, name))
    figure = _hstack(rendered, _GAP, _DARK)

    words = [t for t in (title, None if score is None else f"score {score:.4f}") if t]
    if words:
        strip = np.full((_CAPTION_H + 4, figure.shape[1], 3), _DARK, dtype=np.uint8)
        _put_text(strip, "   ".join(words), (6, _CAPTION_H - 4), figure.shape[1] - 12, scale=0.55)
        figure = np.vstack([strip, figure])
    return figure


def save_panel(
    path: str | os.PathLike,
    image: Any,
    anomaly_map: Any,
    gt_mask: Any | None,
    reconstruction: Any,
    mode: str,
    score: float | None = None,
    title: str | None = None,
    map_range: tuple[float, float] = (0.0, 1.0),
) -> None:
    """Write render_panel(...) as a PNG at path."""
    _write_png(path, render_panel(image, anomaly_map, gt_mask, reconstruction, mode, score, title,
                                  map_range))


def fit_square(img: np.ndarray, side: int) -> np.ndarray:
    """Resize to side x side: area averaging down, nearest neighbour up (pixels stay honest)."""
    h, w = img.shape[:2]
    if (h, w) == (side, side):
        return img
    shrink = h > side or w > side
    return cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_NEAREST)


def mask_picture(mask: np.ndarray) -> np.ndarray:
    """A boolean H×W ground truth as a BGR uint8 picture: white = anomalous."""
    return np.repeat(np.where(mask, 255, 0).astype(np.uint8)[..., None], 3, axis=2)


def render_thumbnails(image: Any, anomaly_map: Any, gt_mask: Any | None, mode: str,
                      map_range: tuple[float, float] = (0.0, 1.0), side: int = 128,
                      with_ground_truth: bool = True) -> dict[str, np.ndarray]:
    """The pictures of one sample for a report, each a side x side BGR uint8 image, in column order:
    "input" (rgb; the colour-mapped depth in mode d), "depth" (rgbd), "heat map" (the map on the
    fixed scale map_range over the input) and, with ``with_ground_truth``, "ground truth" (white =
    anomalous; all black when gt_mask is None)."""
    if mode not in IMAGE_CHANNELS:
        raise ValueError(f"mode must be one of {sorted(IMAGE_CHANNELS)}, got {mode!r}")
    image = _to_numpy(image).astype(np.float32)
    amap = _to_numpy(anomaly_map).astype(np.float32).reshape(image.shape[1:])
    out: dict[str, np.ndarray] = {}
    if not has_rgb(mode):
        lo, hi = _depth_range(image[-1])
        out["input"] = _depth_to_bgr(image[-1], lo, hi)
        base = cv2.cvtColor(_depth_to_uint8(image[-1], lo, hi), cv2.COLOR_GRAY2BGR)
    else:
        out["input"] = base = _rgb_to_bgr8(image[:3])
        if has_depth(mode):
            out["depth"] = _depth_to_bgr(image[-1], *_depth_range(image[-1]))
    out["heat map"] = heat_overlay(base, amap, map_range)
    if with_ground_truth:
        g = np.zeros(amap.shape, np.float32) if gt_mask is None else _to_numpy(gt_mask).astype(np.float32)
        out["ground truth"] = mask_picture(g.reshape(amap.shape) > 0.5)
    return {name: fit_square(np.ascontiguousarray(img), side) for name, img in out.items()}


def render_synthesis_sample(x0: Any, x_t: Any, mask: Any, mask_c: Any, t: int, mode: str,
                            anomalous: bool) -> np.ndarray:
    """One row of a synthesis preview: x0 | x_t | M | M_c (rgbd: rgb then depth of each image).

    Depth is colour-mapped on one range for x0 and x_t (the union of their valid values), so
    a synthetic bump shows as a change of colour.
    """
    x0, x_t = _to_numpy(x0).astype(np.float32), _to_numpy(x_t).astype(np.float32)
    panels: list[tuple[np.ndarray, str]] = []
    lo = hi = 0.0
    if has_depth(mode):
        both = np.concatenate([x0[-1][x0[-1] != 0], x_t[-1][x_t[-1] != 0]])
        lo, hi = _depth_range(both if both.size else np.zeros(1))
    for name, img in (("x0", x0), (f"x_t (t={t})", x_t)):
        if has_rgb(mode):
            panels.append((_rgb_to_bgr8(img[:3]), name))
        if has_depth(mode):
            panels.append((_depth_to_bgr(img[-1], lo, hi), f"{name} depth"))
    for name, m in (("M" if anomalous else "M (normal half)", mask), ("M_c", mask_c)):
        g = _to_numpy(m).astype(np.float32).reshape(x0.shape[1:])
        panels.append((np.repeat(np.where(g > 0.5, 255, 0).astype(np.uint8)[..., None], 3, axis=2), name))
    h, w = x0.shape[1:]
    factor = math.ceil(_MIN_SIDE / min(h, w)) if min(h, w) < _MIN_SIDE else 1
    rendered = [_caption(cv2.resize(img, (w * factor, h * factor), interpolation=cv2.INTER_NEAREST)
                         if factor > 1 else img, name) for img, name in panels]
    return _hstack(rendered, _GAP, _DARK)


# ---------------------------------------------------------------------------
# Curves
# ---------------------------------------------------------------------------

_PLOT_W, _PLOT_H = 520, 460
_LEFT, _RIGHT, _TOP, _BOTTOM = 72, 24, 44, 64
_CURVE_COLOUR = (180, 90, 20)  # BGR: a strong blue
_GRID_COLOUR = (225, 225, 225)


def _tick_label(v: float) -> str:
    """Short tick text: 0, 0.06, 0.5, 1."""
    text = f"{v:.2f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def render_curve(
    x: Any,
    y: Any,
    title: str,
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float] = (0.0, 1.0),
    note: str = "",
) -> np.ndarray:
    """A line plot (BGR image) with axes, ticks, grid, labels; y runs over 0..1.

    Used for ROC curves (x = FPR up to 1) and PRO curves (x = FPR up to 0.3).
    `note` is written in the lower right corner of the plot (e.g. the area).
    """
    img = np.full((_PLOT_H, _PLOT_W, 3), 255, dtype=np.uint8)
    x0, x1 = _LEFT, _PLOT_W - _RIGHT
    y0, y1 = _TOP, _PLOT_H - _BOTTOM  # pixel rows of y = 1 and y = 0
    xmin, xmax = float(xlim[0]), float(xlim[1])
    if not xmax > xmin:
        raise ValueError(f"xlim must be increasing, got {xlim}")

    def to_px(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        px = x0 + (np.clip(xs, xmin, xmax) - xmin) / (xmax - xmin) * (x1 - x0)
        py = y1 - np.clip(ys, 0.0, 1.0) * (y1 - y0)
        return px, py

    # Grid and ticks: 6 ticks on each axis.
    for v in np.linspace(xmin, xmax, 6):
        px = int(round(to_px(np.array([v]), np.array([0.0]))[0][0]))
        cv2.line(img, (px, y0), (px, y1), _GRID_COLOUR, 1)
        cv2.line(img, (px, y1), (px, y1 + 5), (0, 0, 0), 1)
        _put_text(img, _tick_label(v), (px, y1 + 20), 60, (0, 0, 0), 0.42, "center")
    for v in np.linspace(0.0, 1.0, 6):
        py = int(round(to_px(np.array([xmin]), np.array([v]))[1][0]))
        cv2.line(img, (x0, py), (x1, py), _GRID_COLOUR, 1)
        cv2.line(img, (x0 - 5, py), (x0, py), (0, 0, 0), 1)
        _put_text(img, _tick_label(v), (x0 - 8, py + 5), 40, (0, 0, 0), 0.42, "right")
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)

    # The curve, with sub-pixel precision (shift) and anti-aliasing.
    xs = _to_numpy(x).astype(np.float64).reshape(-1)
    ys = _to_numpy(y).astype(np.float64).reshape(-1)
    if xs.shape != ys.shape:
        raise ValueError(f"x ({xs.size}) and y ({ys.size}) differ in length")
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    if xs.size:
        shift = 4
        px, py = to_px(xs, ys)
        pts = np.round(np.stack([px, py], axis=1) * (1 << shift)).astype(np.int32)
        if pts.shape[0] == 1:
            cv2.circle(img, tuple(int(v) for v in pts[0]), 3 << shift, _CURVE_COLOUR, -1, cv2.LINE_AA, shift)
        else:
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, _CURVE_COLOUR, 2, cv2.LINE_AA, shift)

    _put_text(img, title, (_PLOT_W // 2, 28), _PLOT_W - 20, (0, 0, 0), 0.6, "center")
    _put_text(img, xlabel, ((x0 + x1) // 2, _PLOT_H - 18), x1 - x0, (0, 0, 0), 0.5, "center")
    if note:
        _put_text(img, note, (x1 - 8, y1 - 10), x1 - x0 - 16, (0, 0, 0), 0.5, "right")
    # Vertical y label: draw it horizontally on its own strip, then rotate.
    label = np.full((26, y1 - y0, 3), 255, dtype=np.uint8)
    _put_text(label, ylabel, ((y1 - y0) // 2, 18), y1 - y0, (0, 0, 0), 0.5, "center")
    img[y0:y1, 8:34] = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return img


def save_curve(
    path: str | os.PathLike,
    x: Any,
    y: Any,
    title: str,
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float] = (0.0, 1.0),
    note: str = "",
) -> None:
    """Write render_curve(...) as a PNG at path."""
    _write_png(path, render_curve(x, y, title, xlabel, ylabel, xlim, note))


# ---------------------------------------------------------------------------
# Grids
# ---------------------------------------------------------------------------

def render_grid(panels: Sequence[Any], ncols: int, gap: int = 6,
                background: tuple[int, int, int] = _WHITE) -> np.ndarray:
    """Stack pictures into rows of `ncols`, each centred in a cell of the largest size.

    Accepts BGR [H,W,3] or grey [H,W] uint8 pictures (e.g. render_panel output).
    """
    if not panels:
        raise ValueError("render_grid needs at least one picture")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    pictures = []
    for p in panels:
        p = _to_numpy(p)
        if p.dtype != np.uint8:
            raise ValueError(f"grid pictures must be uint8, got {p.dtype}")
        pictures.append(cv2.cvtColor(p, cv2.COLOR_GRAY2BGR) if p.ndim == 2 else p)
    cell_h = max(p.shape[0] for p in pictures)
    cell_w = max(p.shape[1] for p in pictures)
    ncols = min(ncols, len(pictures))
    nrows = math.ceil(len(pictures) / ncols)
    grid = np.full((nrows * cell_h + (nrows + 1) * gap, ncols * cell_w + (ncols + 1) * gap, 3),
                   background, dtype=np.uint8)
    for i, p in enumerate(pictures):
        r, c = divmod(i, ncols)
        top = gap + r * (cell_h + gap) + (cell_h - p.shape[0]) // 2
        left = gap + c * (cell_w + gap) + (cell_w - p.shape[1]) // 2
        grid[top:top + p.shape[0], left:left + p.shape[1]] = p
    return grid


def save_grid(path: str | os.PathLike, panels: Sequence[Any], ncols: int) -> None:
    """Write render_grid(panels, ncols) as a PNG at path (e.g. a qualitative figure)."""
    _write_png(path, render_grid(panels, ncols))
