"""MVTec 3D-AD point clouds → the depth channel TransFusion sees (docs/method.md §1 "Depth").

Pipeline per file: :func:`read_xyz` → :func:`preprocess_depth` (nearest resize, two
hole-filling passes of the raw z; separately the background-plane mask) → over the raw,
full-size training z :func:`depth_range` → per image :func:`normalise_depth`.

The plane mask only says where synthetic anomalies may be placed (docs/method.md §2); the network's
input is the whole measured z, background table included, exactly as the released weights
were trained on (on MVTec 3D-AD the table reads about −0.35…−0.5 after normalisation).

MVTec 3D-AD marks a missing point with (0, 0, 0); "z == 0" therefore means
"no measurement" everywhere in this module.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.core.errors import TransFusionError

__all__ = ["read_xyz", "check_xyz", "preprocess_depth", "fill_holes", "depth_range", "normalise_depth",
           "PLANE_DISTANCE"]

# Points farther than this from the fitted background plane are foreground (docs/method.md §1).
PLANE_DISTANCE = 0.005


def read_xyz(path: str | os.PathLike) -> np.ndarray:
    """Read an MVTec 3D-AD ``xyz/*.tiff`` as HxWx3 float32 (x, y, z).

    NaN/inf points are set to 0 (MVTec's "missing point") with a one-line warning.
    """
    from data.io import read_tiff_checked, too_many_pixels  # tifffile is imported there lazily

    p = Path(path)
    try:
        if p.is_file() and p.stat().st_size == 0:
            raise OSError("the file is empty (0 bytes)")
        arr, notes = read_tiff_checked(p)  # refuses absurd header sizes before allocating
    except FileNotFoundError as exc:
        raise TransFusionError(
            f"xyz file not found: '{p}'; MVTec 3D-AD keeps one xyz/<name>.tiff beside every rgb/<name>.png"
        ) from exc
    except Exception as exc:
        too_large = too_many_pixels(p, "xyz file", exc)
        if too_large is not None:
            raise too_large from exc
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise TransFusionError(
            f"cannot read xyz file '{p}': {reason}; expected a float32 HxWx3 TIFF as shipped with MVTec 3D-AD"
        ) from exc
    return check_xyz(arr, str(p), damage=f" (tifffile: {notes[0]})" if notes else "", from_file=True)


def check_xyz(arr: np.ndarray, name: str, damage: str = "", from_file: bool = False) -> np.ndarray:
    """A point cloud as HxWx3 float32 (a copy): refuses other shapes and integer values, and sets
    NaN/inf points to 0 (MVTec's "missing point") with a one-line warning. ``name``: the file, or
    what the array is (an API input); ``damage``: what tifffile worked around, for the message."""
    what = f"xyz file '{name}'" if from_file else name
    arr = np.asarray(arr)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise TransFusionError(
            f"{what} has shape {tuple(arr.shape)}{damage}; expected HxWx3 (x, y, z per pixel) as in MVTec 3D-AD"
        )
    if arr.dtype.kind != "f":
        # integer "coordinates" are almost surely an RGB image saved as TIFF, not a point cloud
        raise TransFusionError(
            f"{what} holds {arr.dtype} values; expected float32 coordinates (is it an image, not an xyz file?)"
        )
    xyz = arr.astype(np.float32, copy=True)
    bad = ~np.isfinite(xyz).all(axis=2)
    n_bad = int(bad.sum())
    if n_bad:
        xyz[bad] = 0.0
        warnings.warn(f"{name}: {n_bad} point(s) with NaN/inf coordinates treated as missing (set to 0)", stacklevel=3)
    return xyz


def _resize_nearest(xyz: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize with source index floor(dst * in/out).

    This is the index rule of both ``torch.nn.functional.interpolate(mode="nearest")``
    and ``cv2.INTER_NEAREST``; written out so the result cannot depend on either.
    """
    h, w = xyz.shape[:2]
    rows = np.minimum(np.floor(np.arange(size) * (h / size)).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(size) * (w / size)).astype(np.int64), w - 1)
    return xyz[rows][:, cols]


def _corner_mean(patch: np.ndarray) -> np.ndarray | None:
    pts = patch.reshape(-1, 3).astype(np.float64)
    valid = pts[:, 2] != 0
    if not valid.any():
        return None
    return pts[valid].mean(axis=0)


def fill_holes(depth: np.ndarray, passes: int = 2) -> np.ndarray:
    """Each zero pixel takes the mean of the non-zero values in its 3x3 neighbourhood.

    All pixels of one pass are updated simultaneously from the previous pass's
    values, so ``passes`` bounds how far (in pixels) values spread.
    """
    d = np.asarray(depth, dtype=np.float64)
    h, w = d.shape
    for _ in range(passes):
        nz = (d != 0).astype(np.float64)
        pd = np.pad(d, 1)
        pn = np.pad(nz, 1)
        total = np.zeros_like(d)
        count = np.zeros_like(d)
        for dy in range(3):
            for dx in range(3):
                total += pd[dy : dy + h, dx : dx + w]
                count += pn[dy : dy + h, dx : dx + w]
        fill = (nz == 0) & (count > 0)
        if not fill.any():
            break
        d = d.copy()
        d[fill] = total[fill] / count[fill]
    return d.astype(np.float32)


def preprocess_depth(xyz: np.ndarray, size: int, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """xyz HxWx3 → (depth SxS float32, plane_mask SxS float32 0/1), following docs/method.md §1.

    ``depth`` is the whole raw z (background included) after two hole-filling passes, still
    in the file's units (see :func:`normalise_depth`); ``plane_mask`` marks the object, off
    the fitted background plane, and only places synthetic anomalies. ``name`` only labels
    warnings. If a corner patch has no valid point, or the three corner points are
    collinear, no plane can be fitted (the released code divides by zero there, its issue
    #14): every measured point is then kept as foreground and a warning is issued.
    """
    xyz = np.asarray(xyz, dtype=np.float32)
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise TransFusionError(f"{name or 'xyz array'}: shape {xyz.shape}; expected HxWx3")
    size = int(size)
    small = _resize_nearest(xyz, size)
    z = small[..., 2]
    valid = z != 0

    corners = [_corner_mean(small[:3, :3]), _corner_mean(small[:3, -3:]), _corner_mean(small[-3:, :3])]
    foreground = None
    if all(c is not None for c in corners):
        p1, p2, p3 = corners
        normal = np.cross(p2 - p1, p3 - p1)
        norm = float(np.linalg.norm(normal))
        # Relative test: coordinates may be in metres or millimetres.
        scale = max(float(np.linalg.norm(p2 - p1) * np.linalg.norm(p3 - p1)), 1e-30)
        if norm / scale > 1e-9:
            normal /= norm
            dist = np.abs(small.astype(np.float64) @ normal - float(normal @ p1))
            foreground = (dist > PLANE_DISTANCE) & valid
    if foreground is None:
        if valid.any():
            what = "keeping every measured point as foreground"
        else:  # nothing measured: "every measured point" would be no point at all
            what = "it has no measured point at all (every z is 0), so no synthetic anomaly is placed on it"
        warnings.warn(
            f"{name or 'xyz array'}: cannot fit the background plane (a corner patch has no valid "
            f"point or the corners are collinear); {what}",
            stacklevel=2,
        )
        foreground = valid

    kernel = np.ones((3, 3), np.uint8)
    closed = cv2.morphologyEx(foreground.astype(np.uint8), cv2.MORPH_CLOSE, kernel, iterations=3)
    plane_mask = (closed > 0).astype(np.float32)
    depth = fill_holes(z, passes=2)
    return depth, plane_mask


def depth_range(depths: Iterable[np.ndarray]) -> tuple[float, float]:
    """(gmin, gmax) over training depths: 0.9·min(0, min non-zero z), 1.1·max(1, max z).

    Pass the raw z of the full-size training tiffs (before resizing or filling), as the
    released code does. Its running min starts at 0 and its running max at 1, so on
    MVTec 3D-AD (all z > 0) gmin is 0.
    """
    lo, hi = 0.0, 1.0
    for d in depths:
        arr = np.asarray(d, dtype=np.float64)
        arr = arr[np.isfinite(arr) & (arr != 0)]
        if arr.size:
            lo = min(lo, float(arr.min()))
            hi = max(hi, float(arr.max()))
    return 0.9 * lo, 1.1 * hi


def normalise_depth(depth: np.ndarray, gmin: float, gmax: float) -> torch.Tensor:
    """[1, S, S] float32: ``(z - gmax) / (gmax - gmin)`` where z != 0, exactly 0 where z == 0."""
    gmin, gmax = float(gmin), float(gmax)
    if not (np.isfinite(gmin) and np.isfinite(gmax) and gmax > gmin):
        raise TransFusionError(
            f"invalid depth normalisation range (gmin={gmin}, gmax={gmax}); expected finite gmin < gmax "
            f"(recompute it from the training xyz files or use the one saved with the checkpoint)"
        )
    d = np.asarray(depth, dtype=np.float64)
    out = np.where(d != 0, (d - gmax) / (gmax - gmin), 0.0).astype(np.float32)
    return torch.from_numpy(out)[None]
