"""Foreground masks F that restrict where synthetic anomalies are drawn (docs/method.md §2).

Which categories get a mask:

- texture categories (carpet, grid, leather, tile, wood, zipper) never do: an
  anomaly may appear anywhere, so F is all ones (:meth:`FgMaskSource.for_category`
  returns None);
- every other category (MVTec AD objects, all VisA and MVTec 3D-AD categories, a
  ``folder`` dataset) gets one mask per training image, either the released masks
  (``fg_mask_path``; the command line looks in ``./fg_masks/`` unless told otherwise, as
  the released code does) or, where there are none, masks computed here;
- nobody gets one when ``use_fg_masks`` is False (F all ones).

For MVTec 3D-AD in depth modes (d, rgbd) the training set uses the depth plane
mask instead and ignores these masks.

Computed masks (no released masks given): for MVTec 3D-AD with its xyz files,
the depth background-plane mask; otherwise a background model from the image
border (k-means on Lab colour plus local texture), distance of every pixel to
it, a threshold (Otsu, capped by the border's own spread), morphology, hole
filling, large components only, and their convex hull. An implausible result
(< 2 % or > 98 % of the image) falls back to all ones for that image, which is
the safe choice: anomalies may then land on background, as for textures.
Computed masks are cached as PNGs plus a manifest, and ``preview.png`` shows a
few image | mask | overlay rows so a user can check them at a glance.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from data.catalog import NO_COMPUTED_FG_MASKS, TEXTURE_CATEGORIES, xyz_path_for
from data.depth import preprocess_depth, read_xyz
from data.io import read_rgb_uint8
from utils.core.atomic import atomic_write_bytes, atomic_write_json
from utils.core.errors import TransFusionError
from utils.core.json_files import BadJsonFile, load_json_file

__all__ = ["DEFAULT_FG_MASK_PATH", "FgMaskSource", "compute_fg_mask", "load_released_mask", "released_mask_files"]

# Where the released code (and scripts/download_weights.py fg_masks) keeps the released masks.
DEFAULT_FG_MASK_PATH = "./fg_masks/"

# Bump when the computed-mask algorithm changes so old caches are not reused.
_ALGORITHM_VERSION = 2
_MANIFEST = "fg_masks.json"
_PLAUSIBLE = (0.02, 0.98)
_TEXTURE_WEIGHT = 3.0  # Lab units per unit of local lightness std
_MIN_DISTANCE = 4.0  # Lab units; below this a difference is noise
_DILATE = np.ones((5, 5), np.uint8)  # the released masks are dilated with a 5x5 kernel (docs/method.md §2)


def _encode_png(arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise TransFusionError("could not encode a PNG (cv2.imencode failed)")
    return buf.tobytes()


def load_released_mask(path: str | os.PathLike, img_size: int) -> np.ndarray:
    """One released mask → SxS uint8 0/1, as the released code reads it (docs/method.md §2): 8-bit
    colour read, OpenCV linear resize (no antialiasing), grey, /255 > 0.5, 5x5 dilation."""
    p = Path(path)
    arr = cv2.imread(str(p), cv2.IMREAD_COLOR)  # 8-bit BGR whatever the file's depth
    if arr is None:
        raise TransFusionError(f"cannot read foreground mask '{p}'; expected a PNG or JPG image "
                               f"(re-download the masks with scripts/download_weights.py fg_masks)")
    resized = cv2.resize(arr, (img_size, img_size), interpolation=cv2.INTER_LINEAR)
    grey = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)
    binary = (grey.astype(np.float32) / 255.0 > 0.5).astype(np.uint8)
    return cv2.dilate(binary, _DILATE, iterations=1)


def released_mask_files(folder: Path) -> list[Path]:
    """Every ``*.png`` in ``folder``, or every ``*.JPG`` when there is none, sorted by name
    (the released code's two globs; they pair with the sorted training images by position)."""
    for suffix in (".png", ".JPG"):
        files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.suffix == suffix), key=lambda p: p.name)
        if files:
            return files
    return []


def _work_size(img_size: int) -> int:
    # Morphology needs some resolution to be meaningful, and more than 256 px adds only time.
    return int(min(max(img_size, 128), 256))


def _object_from_distance(dist: np.ndarray, top: float, ring_dist: np.ndarray, w: int) -> np.ndarray:
    """Threshold the distance-to-background map and clean it into the object's mask (bool w x w).

    Threshold: Otsu, but no higher than 3x the background ring's own 99th-percentile spread: a
    strongly contrasted part of the object (highlights) would otherwise pull Otsu up and leave
    the rest of the object out. A too-large mask is harmless (like a texture category); a
    too-small one hides real anomaly locations. Never below 4 units so sensor noise on a
    uniform image is not "foreground".
    """
    d8 = np.clip(dist / top * 255.0, 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(d8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    ring_spread = float(np.percentile(ring_dist, 99))
    threshold = max(min(otsu / 255.0 * top, 3.0 * ring_spread), _MIN_DISTANCE)
    fg = dist > threshold

    k_small = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(3, w // 64) | 1,) * 2)
    k_large = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(5, w // 16) | 1,) * 2)
    m = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, k_small)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, k_large)
    m = ndimage.binary_fill_holes(m > 0)
    n, comp = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
    if n > 1:
        areas = np.bincount(comp.ravel())[1:]
        keep_min = max(0.1 * areas.max(), 0.005 * w * w)
        m = np.isin(comp, 1 + np.flatnonzero(areas >= keep_min))
    if m.any():
        # Convex hull of what was kept: parts of an object that resemble the background
        # (a dark tyre sidewall on a dark table) are recovered, and a generous mask only
        # costs some anomalies drawn on background, whereas a missing part would never
        # see an anomaly at all.
        pts = cv2.findNonZero(m.astype(np.uint8))
        hull = np.zeros((w, w), np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(pts), 1)
        m = hull > 0
    return m


def compute_fg_mask(rgb: np.ndarray, img_size: int) -> tuple[np.ndarray, bool]:
    """Estimate the object's foreground in an HxWx3 uint8 image.

    Returns (SxS uint8 0/1 mask, plausible). When not plausible the mask is all ones.
    """
    w = _work_size(img_size)
    small = np.asarray(Image.fromarray(rgb).resize((w, w), Image.BILINEAR))
    lab = cv2.cvtColor(small.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    # Texture channel: smoothed local standard deviation of lightness. Dark objects on
    # dark backgrounds (e.g. MVTec 3D-AD tire) differ from the background in texture,
    # not in colour.
    win = max(3, w // 28) | 1
    mean = cv2.blur(lab[..., 0], (win, win))
    sq = cv2.blur(lab[..., 0] ** 2, (win, win))
    local_std = np.sqrt(np.maximum(sq - mean * mean, 0.0))
    # A single strong edge also has a high local std, but only in a band one window
    # wide; a grey erosion of that width removes the band (which would otherwise add a
    # halo around every object) while a genuinely textured area survives it.
    local_std = cv2.erode(local_std, np.ones((win + 2, win + 2), np.uint8))
    texture = cv2.GaussianBlur(local_std, (0, 0), sigmaX=w / 64.0)
    lab = cv2.GaussianBlur(lab, (0, 0), sigmaX=max(w / 128.0, 0.5))
    feat = np.concatenate([lab, _TEXTURE_WEIGHT * texture[..., None]], axis=2).astype(np.float32)

    # Background model: features of a thin border ring. k-means with 3 clusters copes
    # with vignetting/gradients; clusters covering < 20 % of the ring are dropped
    # because they are usually the object touching the border.
    b = max(2, w // 32)

    def ring_of(a: np.ndarray) -> np.ndarray:
        c = a.shape[2]
        return np.concatenate(
            [a[:b].reshape(-1, c), a[-b:].reshape(-1, c), a[b:-b, :b].reshape(-1, c), a[b:-b, -b:].reshape(-1, c)]
        )

    ring = ring_of(feat)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    cv2.setRNGSeed(0)  # k-means++ init is random; a cached mask should not depend on luck
    _, labels, centres = cv2.kmeans(ring, 3, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    share = np.bincount(labels.ravel(), minlength=3) / float(len(labels))
    centres = centres[share >= 0.2]
    dist = np.min(np.linalg.norm(feat[:, :, None, :] - centres[None, None], axis=3), axis=2)

    top = float(dist.max())
    if top <= 1e-6:
        return np.ones((img_size, img_size), np.uint8), False
    m = _object_from_distance(dist, top, ring_of(dist[..., None]), w)
    frac = float(m.mean())
    if not (_PLAUSIBLE[0] <= frac <= _PLAUSIBLE[1]):
        return np.ones((img_size, img_size), np.uint8), False
    out = cv2.resize(m.astype(np.uint8), (img_size, img_size), interpolation=cv2.INTER_NEAREST)
    # Same 5x5 dilation as the released masks: a generous margin keeps anomalies on object edges.
    return cv2.dilate(out, _DILATE, iterations=1), True


def _depth_fg_mask(xyz_path: Path, img_size: int) -> tuple[np.ndarray, bool]:
    """Foreground from the point cloud: plane mask times measured depth, dilated 5x5."""
    depth, plane = preprocess_depth(read_xyz(xyz_path), img_size, name=str(xyz_path))
    m = ((plane > 0) & (depth != 0)).astype(np.uint8)
    frac = float(m.mean())
    if not (_PLAUSIBLE[0] <= frac <= _PLAUSIBLE[1]):
        return np.ones((img_size, img_size), np.uint8), False
    return cv2.dilate(m, _DILATE, iterations=1), True


def _write_preview(path: Path, train_paths: Sequence[Path], masks: np.ndarray, n: int = 6) -> None:
    """Contact sheet: one row per image, columns image | mask | overlay (background dimmed, red tint)."""
    tile = int(min(masks.shape[1], 160))
    rows = []
    for i in np.linspace(0, len(train_paths) - 1, num=min(n, len(train_paths))).round().astype(int):
        img = np.asarray(Image.fromarray(read_rgb_uint8(train_paths[i])).resize((tile, tile), Image.BILINEAR))
        m = cv2.resize(masks[i], (tile, tile), interpolation=cv2.INTER_NEAREST).astype(bool)
        mask_rgb = np.repeat((m * 255).astype(np.uint8)[..., None], 3, axis=2)
        overlay = img.astype(np.float32)
        overlay[~m] = overlay[~m] * 0.3 + np.array([120, 0, 0], np.float32)
        gap = np.full((tile, 4, 3), 64, np.uint8)
        rows.append(np.concatenate([img, gap, mask_rgb, gap, np.clip(overlay, 0, 255).astype(np.uint8)], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 64, np.uint8))
    sheet = np.concatenate(rows[:-1], axis=0)
    atomic_write_bytes(path, _encode_png(cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)))


class FgMaskSource:
    """Per-training-image foreground masks, ``src[i]`` → float32 [1, S, S] holding 0/1.

    Position ``i`` matches the i-th *sorted* training image (see
    :func:`data.discovery.find_train_images`). ``source`` says where the masks came from
    (``released:<folder>`` or ``computed:<cache>``); ``note`` is the one line a run prints
    about them.
    """

    def __init__(self, masks: np.ndarray, source: str, n_fallback: int = 0, note: str = "") -> None:
        self.masks = np.ascontiguousarray(masks.astype(np.uint8))  # [N, S, S]
        self.source = source
        self.n_fallback = n_fallback
        self.note = note or f"foreground masks: {source}"

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.masks[i].astype(np.float32))[None]

    def record(self) -> dict[str, object]:
        """What a run's meta and summary files keep about these masks."""
        kind, _, where = self.source.partition(":")
        return {"kind": kind, "path": where, "n": len(self), "fallbacks": self.n_fallback}

    @classmethod
    def for_category(
        cls,
        dataset: str,
        category: str,
        train_paths: Sequence[Path],
        img_size: int,
        fg_mask_path: str | os.PathLike | None,
        use_fg_masks: bool,
        cache_dir: Path | None,
        required: bool = True,
        texture_rule: bool = True,
        computed: bool | None = None,
    ) -> FgMaskSource | None:
        """Masks for one category, or None meaning "all ones" (textures, masks disabled, or a dataset
        of NO_COMPUTED_FG_MASKS without released masks; with
        ``texture_rule`` False, as -c train_multiclass trains, texture categories get masks too).

        With ``fg_mask_path`` the released masks are used, from
        ``<fg_mask_path>/<dataset>_masks/<category>/train/good/`` (or
        ``<fg_mask_path>/<category>/train/good/``). When that folder does not exist, a
        ``required`` path is an error; otherwise (the default ``./fg_masks/``, which the
        user did not name) masks are computed, as without ``fg_mask_path``, and cached in
        ``cache_dir`` when given. ``computed``: whether masks may be computed at all (default:
        not for the datasets of NO_COMPUTED_FG_MASKS).
        """
        if not use_fg_masks or (texture_rule and category in TEXTURE_CATEGORIES):
            return None
        train_paths = [Path(p) for p in train_paths]
        if not train_paths:
            raise TransFusionError(f"no training images given for foreground masks of '{category}'")
        if fg_mask_path:
            root = Path(fg_mask_path)
            candidates = [root / f"{dataset}_masks" / category / "train" / "good", root / category / "train" / "good"]
            folder = next((c for c in candidates if c.is_dir()), None)
            if folder is not None:
                return cls._released(folder, train_paths, int(img_size))
            if required:
                raise TransFusionError(
                    f"no foreground masks for '{category}' under '{root}'; expected '{candidates[0]}' "
                    f"(or drop --fg-mask-path to compute masks)"
                )
            missing = f"no released foreground masks in {candidates[0]}"
        else:
            missing = "no released foreground masks given"
        if not (dataset not in NO_COMPUTED_FG_MASKS if computed is None else computed):
            return None  # anomalies anywhere: computed masks were never checked on this dataset's images
        computed = cls._computed(
            dataset, category, train_paths, int(img_size), None if cache_dir is None else Path(cache_dir)
        )
        where = f"cached in {cache_dir}, preview {Path(cache_dir) / 'preview.png'}" if cache_dir else "not cached"
        computed.note = f"{missing}: computed masks from the images ({where})"
        return computed

    @classmethod
    def _released(cls, folder: Path, train_paths: list[Path], img_size: int) -> FgMaskSource:
        files = released_mask_files(folder)
        if len(files) < len(train_paths):
            raise TransFusionError(
                f"training image '{train_paths[len(files)]}' has no foreground mask: '{folder}' holds "
                f"{len(files)} masks for {len(train_paths)} training images (paired by sorted position); "
                f"re-download the masks or pass --no-fg-masks"
            )
        if len(files) > len(train_paths):
            warnings.warn(
                f"{folder}: {len(files)} foreground masks for {len(train_paths)} training images; "
                f"the first {len(train_paths)} (sorted) are paired with them by position, as the released code does",
                stacklevel=3,
            )
            files = files[: len(train_paths)]
        masks = np.stack([load_released_mask(p, img_size) for p in files])
        empty = int((masks.reshape(len(files), -1).max(axis=1) == 0).sum())
        if empty:
            warnings.warn(
                f"{folder}: {empty} foreground mask(s) are empty; no anomalies will be synthesised on those images",
                stacklevel=3,
            )
        return cls(masks, f"released:{folder}", note=f"foreground masks: released, from {folder}")

    @classmethod
    def _computed(
        cls, dataset: str, category: str, train_paths: list[Path], img_size: int, cache_dir: Path | None
    ) -> FgMaskSource:
        names = [p.name for p in train_paths]
        # MVTec 3D-AD: the point cloud separates object from background far better than
        # colour does (dark objects on a dark table), so use its plane mask when available.
        xyz_paths = [xyz_path_for(p) for p in train_paths] if dataset == "mvtec3d" else []
        method = "depth-plane" if xyz_paths and all(x.is_file() for x in xyz_paths) else "colour"
        manifest = {"version": _ALGORITHM_VERSION, "method": method, "img_size": img_size, "images": names}
        files = [f"{i:05d}_{Path(n).stem}.png" for i, n in enumerate(names)]
        if cache_dir is not None:
            cached = cls._load_cache(cache_dir, manifest, files)
            if cached is not None:
                return cached
        masks = np.zeros((len(train_paths), img_size, img_size), np.uint8)
        fallbacks = 0
        for i, path in enumerate(train_paths):
            if method == "depth-plane":
                masks[i], plausible = _depth_fg_mask(xyz_paths[i], img_size)
            else:
                masks[i], plausible = compute_fg_mask(read_rgb_uint8(path), img_size)
            fallbacks += 0 if plausible else 1
        where = cache_dir if cache_dir is not None else train_paths[0].parent
        if fallbacks:
            warnings.warn(
                f"{where}: {fallbacks} of {len(train_paths)} computed foreground masks for '{category}' looked "
                f"implausible; all-ones masks used for them",
                stacklevel=3,
            )
        if cache_dir is not None:
            try:
                for f, m in zip(files, masks):
                    atomic_write_bytes(cache_dir / f, _encode_png(m * 255))
                _write_preview(cache_dir / "preview.png", train_paths, masks)
                # Manifest last: its presence certifies that every mask file was written.
                atomic_write_json(cache_dir / _MANIFEST, {**manifest, "fallbacks": fallbacks, "files": files})
            except OSError as exc:  # the masks are in memory; a read-only disk only costs the cache
                warnings.warn(f"{cache_dir}: cannot cache foreground masks ({' '.join(str(exc).split())})", stacklevel=3)
        return cls(masks, f"computed:{where}", fallbacks)

    @classmethod
    def _load_cache(cls, cache_dir: Path, manifest: dict, files: list[str]) -> FgMaskSource | None:
        try:
            saved = load_json_file(cache_dir / _MANIFEST)
        except (OSError, BadJsonFile):
            return None
        if not isinstance(saved, dict) or any(saved.get(k) != v for k, v in manifest.items()) \
                or saved.get("files") != files:
            return None  # different images, size or algorithm: recompute rather than misalign
        masks = []
        for f in files:
            m = cv2.imread(str(cache_dir / f), cv2.IMREAD_GRAYSCALE)
            if m is None or m.shape != (manifest["img_size"],) * 2:
                return None
            masks.append((m > 127).astype(np.uint8))
        fallbacks = saved.get("fallbacks", 0)
        if isinstance(fallbacks, bool) or not isinstance(fallbacks, int) or not 0 <= fallbacks <= len(files):
            return None
        return cls(np.stack(masks), f"computed:{cache_dir}", fallbacks)
