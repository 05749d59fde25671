"""Dataset discovery (SPEC §8) and the torch Datasets used for training and testing.

Supported ``dataset`` names:

- ``mvtec``   MVTec AD: ``<cat>/train/good/*.png``, ``<cat>/test/<defect>/*.png``,
  ``<cat>/ground_truth/<defect>/<name>_mask.png``.
- ``visa``    VisA as released (``<cat>/Data/...`` + ``split_csv/1cls.csv``) or in the
  authors' re-arranged layout (``<cat>/{train/good,test/good,test/bad}``,
  ``<cat>/ground_truth/bad/<name>.png``); detected automatically.
- ``mvtec3d`` MVTec 3D-AD: ``<cat>/train/good/{rgb,xyz}``, ``<cat>/test/<defect>/{rgb,xyz,gt}``.
- ``folder``  any folder of good images (``<root>/train/good/*`` or images directly in
  ``<root>``), optionally with an MVTec-style ``test/`` + ``ground_truth/``.

All lists are sorted so that position ``i`` means the same file on every run; the
released foreground masks rely on that (they are matched to training images by position).
"""
from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from data.depth import depth_range, normalise_depth, preprocess_depth, read_xyz
from data.io import IMAGE_EXTENSIONS, image_hw, read_mask, read_rgb
from utils.errors import TransFusionError

if TYPE_CHECKING:
    from data.fg_masks import FgMaskSource

__all__ = [
    "DATASET_CATEGORIES",
    "TEXTURE_CATEGORIES",
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "MODES",
    "TestSample",
    "resolve_categories",
    "find_train_images",
    "find_test_samples",
    "visa_layout",
    "xyz_path_for",
    "TrainDataset",
    "TestDataset",
]

DATASET_CATEGORIES: dict[str, tuple[str, ...]] = {
    "mvtec": (
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
        "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
    ),
    "visa": (
        "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
        "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
    ),
    "mvtec3d": (
        "bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire",
    ),
}

# Texture categories: anomalies may appear anywhere, so the foreground mask is all ones (SPEC §2).
TEXTURE_CATEGORIES: frozenset[str] = frozenset({"carpet", "grid", "leather", "tile", "wood", "zipper"})

DATASETS: tuple[str, ...] = ("mvtec", "visa", "mvtec3d", "folder")
MODES: tuple[str, ...] = ("rgb", "d", "rgbd")

VISA_CSV = Path("split_csv") / "1cls.csv"
_VISA_COLUMNS = ("object", "split", "label", "image", "mask")
# Sub-folder names of the folder layout that cannot be category names.
_FOLDER_RESERVED = frozenset({"train", "test", "ground_truth", "validation"})
_MASK_EXTENSIONS = (".png", ".PNG", ".jpg", ".JPG", ".bmp", ".tif", ".tiff")


@dataclass
class TestSample:
    """One test image: ``label`` is 1 for anomalous, ``mask_path`` None means an all-zero mask."""

    image_path: Path
    mask_path: Path | None
    label: int
    defect: str
    xyz_path: Path | None = None  # MVTec 3D-AD only; None when the xyz file is absent

    __test__ = False  # not a pytest test class despite the name


# ----------------------------------------------------------------------------- helpers


def _check_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise TransFusionError(f"unknown dataset '{dataset}'; expected one of: {', '.join(DATASETS)}")
    return dataset


def _check_root(data_path: str | os.PathLike) -> Path:
    root = Path(data_path).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise TransFusionError(f"data path '{root}' {what}; pass the folder that holds the category folders")
    return root


def _list_images(folder: Path, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; hidden files (e.g. macOS ``._x.png``) skipped."""
    if not folder.is_dir():
        return []
    files = [
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    ]
    return sorted(files, key=lambda p: p.name)


def _subdirs(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _listing(names: list[str], limit: int = 20) -> str:
    if not names:
        return "(nothing)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


_PNG = frozenset({".png"})


def _folder_root(data_path: Path, category: str | None) -> Path:
    """The folder dataset's root: ``data_path/category`` if that sub-folder exists, else ``data_path``."""
    if category and category not in _FOLDER_RESERVED and (data_path / category).is_dir():
        return data_path / category
    return data_path


def visa_layout(data_path: str | os.PathLike, category: str) -> str:
    """``"released"`` if ``split_csv/1cls.csv`` and ``<cat>/Data`` exist, else ``"rearranged"``."""
    root = Path(data_path)
    if (root / VISA_CSV).is_file() and (root / category / "Data").is_dir():
        return "released"
    return "rearranged"


def xyz_path_for(rgb_path: Path) -> Path:
    """MVTec 3D-AD: ``.../<split>/<defect>/rgb/NNN.png`` → ``.../xyz/NNN.tiff`` (``.tif`` if only that exists)."""
    base = rgb_path.parent.parent / "xyz"
    tiff = base / (rgb_path.stem + ".tiff")
    if not tiff.exists() and (base / (rgb_path.stem + ".tif")).exists():
        return base / (rgb_path.stem + ".tif")
    return tiff


def _find_mask(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        for ext in _MASK_EXTENSIONS:
            cand = folder / f"{stem}{suffix}{ext}"
            if cand.is_file():
                return cand
    return None


def _missing_mask_error(image: Path, expected: Path) -> TransFusionError:
    return TransFusionError(
        f"anomalous test image '{image}' has no ground-truth mask; expected '{expected}'"
    )


# ----------------------------------------------------------------------------- categories


def resolve_categories(dataset: str, data_path: str | os.PathLike, category: str) -> list[str]:
    """The categories to run. ``"all"`` → every category of the dataset (all must be present).

    For ``folder`` the single "category" is the folder's own name, unless ``category``
    names a sub-folder of ``data_path``.
    """
    _check_dataset(dataset)
    root = _check_root(data_path)
    if dataset == "folder":
        if category and category not in ("all", root.name) and category not in _FOLDER_RESERVED:
            if (root / category).is_dir():
                return [category]
            warnings.warn(
                f"{root}: no sub-folder '{category}'; using the folder itself as the single category",
                stacklevel=2,
            )
        return [root.name]
    present = _subdirs(root)
    known = DATASET_CATEGORIES[dataset]
    if category == "all":
        missing = [c for c in known if not (root / c).is_dir()]
        if len(missing) == len(known):
            raise TransFusionError(
                f"'{root}' contains none of the {dataset} categories (expected e.g. '{root / known[0]}'); "
                f"found: {_listing(present)}"
            )
        if missing:
            raise TransFusionError(
                f"category folder(s) missing for --category all: "
                f"{', '.join(str(root / m) for m in missing)}; add them or choose one category"
            )
        return list(known)
    if not category or not (root / category).is_dir():
        raise TransFusionError(
            f"category folder '{root / str(category)}' not found; '{root}' contains: {_listing(present)}"
        )
    return [category]


# ----------------------------------------------------------------------------- VisA csv


def _read_visa_csv(data_path: Path, category: str, split: str) -> list[tuple[int, Path, str, Path | None]]:
    """Rows ``(line, image, label, mask)`` of ``split_csv/1cls.csv`` for one category and split.

    Validates the whole file's columns and split/label values (a malformed csv is
    better reported once, up front, than as a missing file later).
    """
    csv_path = data_path / VISA_CSV
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            missing = [c for c in _VISA_COLUMNS if c not in header]
            if missing:
                raise TransFusionError(
                    f"VisA split file '{csv_path}' lacks column(s) {', '.join(missing)}; "
                    f"expected the header object,split,label,image,mask"
                )
            reader.fieldnames = header
            raw_rows = list(reader)
    except TransFusionError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TransFusionError(f"cannot read VisA split file '{csv_path}': {' '.join(str(exc).split())}") from exc

    rows: list[tuple[int, Path, str, Path | None]] = []
    for line, row in enumerate(raw_rows, start=2):  # line 1 is the header
        values = {k: (v or "").strip() for k, v in row.items() if k is not None}
        row_split = values["split"].lower()
        label = values["label"].lower()
        if row_split not in ("train", "test"):
            raise TransFusionError(
                f"VisA split file '{csv_path}' line {line}: split '{values['split']}'; expected 'train' or 'test'"
            )
        if label not in ("normal", "anomaly"):
            raise TransFusionError(
                f"VisA split file '{csv_path}' line {line}: label '{values['label']}'; expected 'normal' or 'anomaly'"
            )
        if values["object"] != category or row_split != split:
            continue
        if not values["image"]:
            raise TransFusionError(f"VisA split file '{csv_path}' line {line}: empty image path")
        image = data_path / values["image"].replace("\\", "/")
        if not image.is_file():
            raise TransFusionError(
                f"VisA split file '{csv_path}' line {line} lists '{image}', which does not exist; "
                f"paths must be relative to '{data_path}'"
            )
        mask: Path | None = None
        if label == "anomaly":
            if split == "train":
                raise TransFusionError(
                    f"VisA split file '{csv_path}' line {line}: anomalous image in the train split; "
                    f"the 1cls protocol trains on normal images only"
                )
            if not values["mask"]:
                raise TransFusionError(
                    f"VisA split file '{csv_path}' line {line}: anomalous image '{image}' has no mask path"
                )
            mask = data_path / values["mask"].replace("\\", "/")
            if not mask.is_file():
                raise _missing_mask_error(image, mask)
        rows.append((line, image, label, mask))
    return rows


# ----------------------------------------------------------------------------- discovery


def find_train_images(dataset: str, data_path: str | os.PathLike, category: str) -> list[Path]:
    """Training (good) images of one category, sorted by file name."""
    _check_dataset(dataset)
    root = _check_root(data_path)
    if dataset == "mvtec":
        folder = root / category / "train" / "good"
        images = _list_images(folder, _PNG)
        pattern = folder / "*.png"
    elif dataset == "mvtec3d":
        folder = root / category / "train" / "good" / "rgb"
        images = _list_images(folder, _PNG)
        pattern = folder / "*.png"
    elif dataset == "visa":
        if visa_layout(root, category) == "released":
            images = sorted((r[1] for r in _read_visa_csv(root, category, "train")), key=lambda p: (p.name, str(p)))
            if not images:
                raise TransFusionError(
                    f"VisA split file '{root / VISA_CSV}' has no train rows for object '{category}'"
                )
            return images
        folder = root / category / "train" / "good"
        if not folder.is_dir() and not (root / category / "Data").is_dir():
            raise TransFusionError(
                f"VisA category '{root / category}' has neither 'train/good' (re-arranged layout) nor "
                f"'Data' with '{root / VISA_CSV}' (released layout)"
            )
        if not folder.is_dir():
            raise TransFusionError(
                f"VisA category '{root / category}' has a 'Data' folder but '{root / VISA_CSV}' is missing; "
                f"copy split_csv/1cls.csv from the VisA release into '{root}'"
            )
        images = _list_images(folder)
        pattern = folder / "*.JPG"
    else:  # folder
        base = _folder_root(root, category)
        folder = base / "train" / "good"
        if not folder.is_dir():
            folder = base
        images = _list_images(folder)
        pattern = folder / "*.png|*.jpg"
    if not images:
        raise TransFusionError(f"no training images in '{folder}'; expected files like '{pattern}'")
    return images


def find_test_samples(dataset: str, data_path: str | os.PathLike, category: str) -> list[TestSample]:
    """Test images with labels and mask paths, sorted by (defect, file name)."""
    _check_dataset(dataset)
    root = _check_root(data_path)
    samples: list[TestSample] = []
    if dataset == "visa" and visa_layout(root, category) == "released":
        for _, image, label, mask in _read_visa_csv(root, category, "test"):
            is_bad = label == "anomaly"
            samples.append(TestSample(image, mask, int(is_bad), "bad" if is_bad else "good"))
        if not samples:
            raise TransFusionError(f"VisA split file '{root / VISA_CSV}' has no test rows for object '{category}'")
        return sorted(samples, key=lambda s: (s.defect, s.image_path.name, str(s.image_path)))

    base = _folder_root(root, category) if dataset == "folder" else root / category
    test_dir = base / "test"
    if not test_dir.is_dir():
        if dataset == "folder":
            return []
        raise TransFusionError(f"test folder '{test_dir}' not found; expected '{test_dir}/<defect>/...'")

    for defect in _subdirs(test_dir):
        is_bad = defect != "good"
        if dataset == "mvtec3d":
            images = _list_images(test_dir / defect / "rgb", _PNG)
        elif dataset == "mvtec":
            images = _list_images(test_dir / defect, _PNG)
        else:
            images = _list_images(test_dir / defect)
        for image in images:
            mask: Path | None = None
            xyz: Path | None = None
            if dataset == "mvtec3d":
                gt = test_dir / defect / "gt" / f"{image.stem}.png"
                mask = gt if gt.is_file() else None
                expected = gt
                xyz_candidate = xyz_path_for(image)
                xyz = xyz_candidate if xyz_candidate.is_file() else None
            elif dataset == "mvtec":
                expected = base / "ground_truth" / defect / f"{image.stem}_mask.png"
                mask = expected if (is_bad and expected.is_file()) else None
            elif dataset == "visa":
                expected = base / "ground_truth" / defect / f"{image.stem}.png"
                mask = _find_mask(expected.parent, image.stem, ("",)) if is_bad else None
            else:  # folder: accept MVTec's <stem>_mask.png and plain <stem>.png
                expected = base / "ground_truth" / defect / f"{image.stem}_mask.png"
                mask = _find_mask(expected.parent, image.stem, ("_mask", "")) if is_bad else None
            if is_bad and mask is None:
                raise _missing_mask_error(image, expected)
            samples.append(TestSample(image, mask, int(is_bad), defect, xyz))
    if not samples and dataset != "folder":
        raise TransFusionError(f"no test images under '{test_dir}'; expected '{test_dir}/<defect>/*.png'")
    return sorted(samples, key=lambda s: (s.defect, s.image_path.name))


# ----------------------------------------------------------------------------- torch datasets


def _check_mode(dataset: str, mode: str) -> None:
    if mode not in MODES:
        raise TransFusionError(f"unknown mode '{mode}'; expected one of: {', '.join(MODES)}")
    if mode != "rgb" and dataset != "mvtec3d":
        raise TransFusionError(
            f"mode '{mode}' needs depth, which only the mvtec3d dataset provides; use --mode rgb for {dataset}"
        )


def _check_size(img_size: int) -> int:
    if int(img_size) != img_size or int(img_size) < 8:
        raise TransFusionError(f"image size {img_size} is invalid; expected an integer >= 8 (default 256)")
    return int(img_size)


class TrainDataset(Dataset):
    """Good training images as ``dict(image=[C,S,S], fg=[1,S,S] 0/1, index=i)``.

    ``C`` is 3 (rgb), 1 (d) or 4 (rgbd: rgb then depth). For rgb, ``fg`` comes from
    ``fg_masks`` (all ones if None); for d/rgbd it is the depth plane mask times
    (depth != 0) and ``fg_masks`` is ignored. Depth modes preprocess every xyz
    file once here; ``self.depth_norm`` is the (gmin, gmax) used (computed from
    these files when not given), which the test set must reuse.
    """

    def __init__(
        self,
        dataset: str,
        data_path: str | os.PathLike,
        category: str,
        mode: str,
        img_size: int,
        fg_masks: FgMaskSource | None = None,
        depth_norm: tuple[float, float] | None = None,
    ) -> None:
        _check_dataset(dataset)
        _check_mode(dataset, mode)
        self.dataset, self.category, self.mode = dataset, category, mode
        self.img_size = _check_size(img_size)
        self.paths: list[Path] = find_train_images(dataset, data_path, category)
        if fg_masks is not None and len(fg_masks) != len(self.paths):
            raise TransFusionError(
                f"{len(fg_masks)} foreground masks for {len(self.paths)} training images in "
                f"'{self.paths[0].parent}'; the masks must match the training images one to one"
            )
        self.fg_masks = fg_masks
        self.depth_norm: tuple[float, float] | None = None
        # Preprocessed (depth, plane_mask) per image: the xyz TIFFs are large and
        # the plane fit is not free, so each is done once rather than every epoch.
        self._depth: list[tuple[np.ndarray, np.ndarray]] = []
        if mode != "rgb":
            self.xyz_paths = [xyz_path_for(p) for p in self.paths]
            raw_extremes: list[np.ndarray] = []  # per file: what depth_range needs of its raw z
            for rgb_path, xyz_path in zip(self.paths, self.xyz_paths):
                if not xyz_path.is_file():
                    raise TransFusionError(
                        f"training image '{rgb_path}' has no point cloud; expected '{xyz_path}' (mode {mode} needs xyz)"
                    )
                xyz = read_xyz(xyz_path)
                z = xyz[..., 2]
                measured = z[z != 0]
                raw_extremes.append(np.array([measured.min(), measured.max()]) if measured.size else measured)
                self._depth.append(preprocess_depth(xyz, self.img_size, name=str(xyz_path)))
            if depth_norm is None:
                # the raw, full-size z before resizing or filling, as the released code takes it
                depth_norm = depth_range(raw_extremes)
            self.depth_norm = (float(depth_norm[0]), float(depth_norm[1]))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.img_size
        parts: list[torch.Tensor] = []
        if self.mode in ("rgb", "rgbd"):
            parts.append(read_rgb(self.paths[i], s))
        if self.mode == "rgb":
            fg = self.fg_masks[i].float() if self.fg_masks is not None else torch.ones(1, s, s)
        else:
            depth, plane = self._depth[i]
            assert self.depth_norm is not None
            parts.append(normalise_depth(depth, *self.depth_norm))
            fg = torch.from_numpy((plane * (depth != 0)).astype(np.float32))[None]
        return {"image": torch.cat(parts, dim=0), "fg": fg, "index": i}


class TestDataset(Dataset):
    """Test images as ``dict(image=[C,S,S], mask=[1,S,S] 0/1, label, defect, path)``.

    Depth modes need the training ``depth_norm`` (gmin, gmax) so that test depths
    are scaled exactly like the training depths.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        dataset: str,
        data_path: str | os.PathLike,
        category: str,
        mode: str,
        img_size: int,
        depth_norm: tuple[float, float] | None = None,
    ) -> None:
        _check_dataset(dataset)
        _check_mode(dataset, mode)
        self.dataset, self.category, self.mode = dataset, category, mode
        self.img_size = _check_size(img_size)
        if mode != "rgb" and depth_norm is None:
            raise TransFusionError(
                f"mode '{mode}' test set for '{category}' needs the training depth range (gmin, gmax); "
                f"take it from the training set or the checkpoint's saved depth_norm"
            )
        self.depth_norm = None if depth_norm is None else (float(depth_norm[0]), float(depth_norm[1]))
        self.samples: list[TestSample] = find_test_samples(dataset, data_path, category)
        if mode != "rgb":
            for sample in self.samples:
                if sample.xyz_path is None:
                    raise TransFusionError(
                        f"test image '{sample.image_path}' has no point cloud; expected "
                        f"'{xyz_path_for(sample.image_path)}' (mode {mode} needs xyz)"
                    )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = self.samples[i]
        s = self.img_size
        parts: list[torch.Tensor] = []
        if self.mode in ("rgb", "rgbd"):
            parts.append(read_rgb(sample.image_path, s))
        if self.mode != "rgb":
            assert sample.xyz_path is not None and self.depth_norm is not None
            depth, _ = preprocess_depth(read_xyz(sample.xyz_path), s, name=str(sample.xyz_path))
            parts.append(normalise_depth(depth, *self.depth_norm))
        if sample.mask_path is not None:
            mask = read_mask(sample.mask_path, s, expected_hw=image_hw(sample.image_path))
        else:
            mask = torch.zeros(1, s, s)
        return {
            "image": torch.cat(parts, dim=0),
            "mask": mask,
            "label": int(sample.label),
            "defect": sample.defect,
            "path": str(sample.image_path),
        }
