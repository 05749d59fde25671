"""Builders of miniature datasets on disk, in each dataset's real layout (SPEC §8).

Not tests: helpers for every test module. Each ``make_*`` writes small images
with visible structure (a striped elliptical object on a shaded background) and,
for anomalous samples, a red blob drawn exactly where the ground-truth mask is set.
Every builder returns the path to pass as ``data_path`` (for ``make_folder``: the
folder itself). Output is deterministic.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

__all__ = [
    "scene",
    "object_mask",
    "defect_mask",
    "make_mvtec",
    "make_visa_released",
    "make_visa_rearranged",
    "make_mvtec3d",
    "make_folder",
    "xyz_scene",
    "OBJECT_Z_OFFSET",
]

# MVTec 3D-AD objects lie on a table; our object is this much closer to the camera than the table.
OBJECT_Z_OFFSET = 0.02


def object_mask(size: int, seed: int) -> np.ndarray:
    """Where :func:`scene` (and :func:`xyz_scene`) draw the object for this seed (bool HxW)."""
    rng = np.random.default_rng(seed)
    cy, cx = size / 2 + rng.uniform(-2, 2), size / 2 + rng.uniform(-2, 2)
    yy, xx = np.mgrid[0:size, 0:size]
    return ((yy - cy) / (0.30 * size)) ** 2 + ((xx - cx) / (0.34 * size)) ** 2 <= 1.0


def defect_mask(size: int, seed: int) -> np.ndarray:
    """A small elliptical blob inside the object (bool HxW), different per seed."""
    rng = np.random.default_rng(1000 + seed)
    cy = size / 2 + rng.uniform(-0.12, 0.12) * size
    cx = size / 2 + rng.uniform(-0.12, 0.12) * size
    ry, rx = rng.uniform(0.06, 0.10) * size, rng.uniform(0.06, 0.10) * size
    yy, xx = np.mgrid[0:size, 0:size]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def scene(size: int, seed: int, defect: np.ndarray | None = None) -> np.ndarray:
    """HxWx3 uint8: light shaded background, striped blue object, red defect where ``defect``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    shade = 190 + 30 * xx / size + 10 * yy / size
    for c, offset in enumerate((0, 4, 8)):
        img[..., c] = shade + offset
    img += rng.normal(0, 2.0, img.shape)
    obj = object_mask(size, seed)
    stripes = ((xx + yy) // 3 % 2 == 0)
    img[obj] = np.array([50, 80, 150], np.float32) + 25 * stripes[obj][:, None]
    if defect is not None:
        img[defect] = np.array([210, 40, 30], np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _save(arr: np.ndarray, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kwargs)
    return path


def _save_jpg(arr: np.ndarray, path: Path) -> Path:
    return _save(arr, path, format="JPEG", quality=95)


def make_mvtec(
    root: Path,
    category: str = "bottle",
    n_train: int = 4,
    n_test_good: int = 2,
    defects: Sequence[str] = ("crack",),
    n_per_defect: int = 2,
    size: int = 64,
) -> Path:
    """MVTec AD: ``<cat>/train/good/NNN.png``, ``<cat>/test/<defect>/NNN.png``, ``<cat>/ground_truth/<defect>/NNN_mask.png``."""
    root = Path(root)
    cat = root / category
    for i in range(n_train):
        _save(scene(size, i), cat / "train" / "good" / f"{i:03d}.png")
    for i in range(n_test_good):
        _save(scene(size, 100 + i), cat / "test" / "good" / f"{i:03d}.png")
    for d, defect in enumerate(defects):
        for i in range(n_per_defect):
            seed = 200 + 10 * d + i
            m = defect_mask(size, seed)
            _save(scene(size, seed, m), cat / "test" / defect / f"{i:03d}.png")
            _save(m.astype(np.uint8) * 255, cat / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


def make_visa_released(
    root: Path,
    category: str = "candle",
    n_train: int = 4,
    n_test_good: int = 2,
    n_anomaly: int = 2,
    size: int = 64,
) -> Path:
    """VisA as released: ``<cat>/Data/Images/{Normal,Anomaly}/*.JPG``, ``<cat>/Data/Masks/Anomaly/*.png``
    (mask values 1, not 255) and ``split_csv/1cls.csv``; rows are appended if the csv exists."""
    root = Path(root)
    rows: list[list[str]] = []
    for i in range(n_train + n_test_good):
        rel = f"{category}/Data/Images/Normal/{i:04d}.JPG"
        _save_jpg(scene(size, i), root / rel)
        rows.append([category, "train" if i < n_train else "test", "normal", rel, ""])
    for i in range(n_anomaly):
        m = defect_mask(size, 300 + i)
        rel = f"{category}/Data/Images/Anomaly/{i:03d}.JPG"
        rel_mask = f"{category}/Data/Masks/Anomaly/{i:03d}.png"
        _save_jpg(scene(size, 300 + i, m), root / rel)
        _save(m.astype(np.uint8), root / rel_mask)  # value 1 where anomalous, like the release
        rows.append([category, "test", "anomaly", rel, rel_mask])
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    new_file = not csv_path.exists()
    with open(csv_path, "a", newline="") as f:
        writer = csv.writer(f)
        if new_file:
            writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return root


def make_visa_rearranged(
    root: Path,
    category: str = "candle",
    n_train: int = 4,
    n_test_good: int = 2,
    n_anomaly: int = 2,
    size: int = 64,
) -> Path:
    """VisA re-arranged by the authors' script: ``<cat>/train/good``, ``<cat>/test/{good,bad}``,
    ``<cat>/ground_truth/bad/<name>.png`` (0/255)."""
    root = Path(root)
    cat = root / category
    for i in range(n_train):
        _save_jpg(scene(size, i), cat / "train" / "good" / f"{i:04d}.JPG")
    for i in range(n_test_good):
        _save_jpg(scene(size, 100 + i), cat / "test" / "good" / f"{n_train + i:04d}.JPG")
    for i in range(n_anomaly):
        m = defect_mask(size, 300 + i)
        _save_jpg(scene(size, 300 + i, m), cat / "test" / "bad" / f"{i:03d}.JPG")
        _save(m.astype(np.uint8) * 255, cat / "ground_truth" / "bad" / f"{i:03d}.png")
    return root


def xyz_scene(size: int, seed: int, hole: np.ndarray | None = None, n_missing: int = 6) -> np.ndarray:
    """HxWx3 float32 organised point cloud: a tilted table plane, the object raised
    ``OBJECT_Z_OFFSET`` above it (towards the camera), a deeper dent where ``hole``,
    and ``n_missing`` missing points (0, 0, 0), one of them in the top-left corner patch."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[0:size, 0:size].astype(np.float64)
    x = (cc - size / 2) * 0.0005
    y = (rr - size / 2) * 0.0005
    z = 0.60 + 0.0004 * cc + 0.0002 * rr  # tilted: linear in x and y, so exactly a plane
    obj = object_mask(size, seed)
    z = np.where(obj, z - OBJECT_Z_OFFSET, z)
    if hole is not None:
        z = np.where(hole, z + 0.008, z)
    xyz = np.stack([x, y, z], axis=2).astype(np.float32)
    xyz[1, 1] = 0.0  # a missing point inside a corner patch: the plane fit must skip it
    for _ in range(max(0, n_missing - 1)):
        r, c = rng.integers(4, size - 4, size=2)
        xyz[r, c] = 0.0
    return xyz


def _save_tiff(arr: np.ndarray, path: Path) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    # Interleaved HxWx3 float32, like the files MVTec ships.
    tifffile.imwrite(path, arr, photometric="minisblack", planarconfig="contig")


def make_mvtec3d(
    root: Path,
    category: str = "tire",
    n_train: int = 3,
    n_val: int = 1,
    n_test_good: int = 1,
    defects: Sequence[str] = ("hole",),
    n_per_defect: int = 2,
    size: int = 64,
    with_xyz: bool = True,
) -> Path:
    """MVTec 3D-AD: ``<cat>/{train,validation}/good/{rgb,xyz}/NNN.png|.tiff`` and
    ``<cat>/test/<defect>/{rgb,xyz,gt}/``. gt masks of good samples are all zero; anomalous
    gt masks alternate 8-bit (0/255) and 16-bit (0/65535)."""
    root = Path(root)
    cat = root / category

    def write(split_dir: Path, name: str, seed: int, m: np.ndarray | None, gt: str | None) -> None:
        _save(scene(size, seed, m), split_dir / "rgb" / f"{name}.png")
        if with_xyz:
            _save_tiff(xyz_scene(size, seed, m), split_dir / "xyz" / f"{name}.tiff")
        if gt == "8":
            _save((m if m is not None else np.zeros((size, size), bool)).astype(np.uint8) * 255,
                  split_dir / "gt" / f"{name}.png")
        elif gt == "16":
            assert m is not None
            _save(m.astype(np.uint16) * 65535, split_dir / "gt" / f"{name}.png")

    for i in range(n_train):
        write(cat / "train" / "good", f"{i:03d}", i, None, None)
    for i in range(n_val):
        write(cat / "validation" / "good", f"{i:03d}", 50 + i, None, None)
    for i in range(n_test_good):
        write(cat / "test" / "good", f"{i:03d}", 100 + i, None, "8")
    for d, defect in enumerate(defects):
        for i in range(n_per_defect):
            seed = 200 + 10 * d + i
            write(cat / "test" / defect, f"{i:03d}", seed, defect_mask(size, seed), "8" if i % 2 == 0 else "16")
    return root


def make_folder(
    root: Path,
    name: str = "parts",
    n_train: int = 4,
    nested: bool = False,
    with_test: bool = False,
    n_test_good: int = 1,
    defects: Sequence[str] = ("scratch",),
    n_per_defect: int = 1,
    mask_suffix: str = "_mask",
    size: int = 64,
) -> Path:
    """A plain folder of good PNGs (``<root>/<name>/*.png``, or ``<name>/train/good/`` if ``nested``),
    optionally with an MVTec-style ``test/<defect>/`` + ``ground_truth/<defect>/<stem><mask_suffix>.png``.
    Returns the folder ``<root>/<name>``."""
    folder = Path(root) / name
    train_dir = folder / "train" / "good" if nested else folder
    for i in range(n_train):
        _save(scene(size, i), train_dir / f"img_{i:03d}.png")
    if with_test:
        for i in range(n_test_good):
            _save(scene(size, 100 + i), folder / "test" / "good" / f"{i:03d}.png")
        for d, defect in enumerate(defects):
            for i in range(n_per_defect):
                seed = 200 + 10 * d + i
                m = defect_mask(size, seed)
                _save(scene(size, seed, m), folder / "test" / defect / f"{i:03d}.png")
                _save(m.astype(np.uint8) * 255, folder / "ground_truth" / defect / f"{i:03d}{mask_suffix}.png")
    train_dir.mkdir(parents=True, exist_ok=True)
    return folder
