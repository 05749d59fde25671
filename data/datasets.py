"""The torch Datasets for training and testing, and the one function that turns an image (and
its point cloud) into the network's input, which prediction uses too (`array_input`: the same
for arrays in memory)."""
from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from data.catalog import xyz_path_for
from data.depth import check_xyz, depth_range, normalise_depth, preprocess_depth, read_xyz
from data.discovery import TestSample, check_dataset, find_test_samples, find_train_images
from data.image_cache import DecodedImages, decoded_bytes
from data.io import image_hw, network_rgb, read_mask, read_rgb, read_rgb_resized, rgb_array_input
from models.modes import MODES, has_depth, has_rgb
from utils.core.errors import TransFusionError

if TYPE_CHECKING:
    from data.fg_masks import FgMaskSource


def model_input(image_path: Path, mode: str, size: int, depth_norm: tuple[float, float] | None = None,
                xyz_path: Path | None = None) -> torch.Tensor:
    """The network's [C, S, S] input for one image (docs/method.md §1): rgb in [-1, 1] and/or the
    normalised depth of its point cloud (``xyz_path``, by default MVTec 3D-AD's place for it)."""
    parts: list[torch.Tensor] = []
    if has_rgb(mode):
        parts.append(read_rgb(image_path, size))
    if has_depth(mode):
        xyz = xyz_path if xyz_path is not None else xyz_path_for(Path(image_path))
        if not xyz.is_file():
            raise TransFusionError(f"'{image_path}' has no point cloud; expected '{xyz}' (mode {mode} needs xyz)")
        if depth_norm is None:
            raise TransFusionError(f"mode {mode} needs the training depth range (gmin, gmax) to read '{xyz}'")
        depth, _ = preprocess_depth(read_xyz(xyz), size, name=str(xyz))
        parts.append(normalise_depth(depth, *depth_norm))
    return torch.cat(parts, dim=0)


def array_input(rgb: np.ndarray | None, xyz: np.ndarray | None, mode: str, size: int,
                depth_norm: tuple[float, float] | None = None, name: str = "input") -> torch.Tensor:
    """`model_input` for arrays already in memory: an RGB uint8 HxWx3 image and/or an HxWx3 float
    point cloud (what `read_rgb_uint8` and `read_xyz` return for the files: the same tensor)."""
    parts: list[torch.Tensor] = []
    if has_rgb(mode):
        if rgb is None:
            raise TransFusionError(f"{name}: mode {mode} needs the RGB image, got none")
        parts.append(rgb_array_input(rgb, size, name=f"{name} (rgb)"))
    if has_depth(mode):
        if xyz is None:
            raise TransFusionError(f"{name}: mode {mode} needs the point cloud, as an (rgb, xyz) pair")
        if depth_norm is None:
            raise TransFusionError(f"mode {mode} needs the training depth range (gmin, gmax) to read {name}")
        depth, _ = preprocess_depth(check_xyz(xyz, f"{name} (xyz)"), size, name=f"{name} (xyz)")
        parts.append(normalise_depth(depth, *depth_norm))
    return torch.cat(parts, dim=0)


def _check_mode(dataset: str, mode: str) -> None:
    if mode not in MODES:
        raise TransFusionError(f"unknown mode '{mode}'; expected one of: {', '.join(MODES)}")
    if has_depth(mode) and dataset != "mvtec3d":
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
    ``exclude``: file names left out (images held out for calibration); ``fg_masks`` still
    pair with all sorted training images by position, so the kept images keep their masks.
    :meth:`keep_decoded` decodes the rgb images once, into memory, for every later item.
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
        exclude: Collection[str] = (),
    ) -> None:
        check_dataset(dataset)
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
        # position of each kept image among all training images: its foreground mask
        self._fg_index = [i for i, p in enumerate(self.paths) if p.name not in exclude]
        if exclude:
            self.paths = [self.paths[i] for i in self._fg_index]
        self.depth_norm: tuple[float, float] | None = None
        # Preprocessed (depth, plane_mask) per image: the xyz TIFFs are large and
        # the plane fit is not free, so each is done once rather than every epoch.
        self._depth: list[tuple[np.ndarray, np.ndarray]] = []
        if has_depth(mode):
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
        self._decoded: DecodedImages | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def decoded_bytes(self) -> int:
        """The memory :meth:`keep_decoded` takes: the rgb images at S x S as uint8 (0 in mode d)."""
        return decoded_bytes(len(self.paths), self.img_size) if has_rgb(self.mode) else 0

    @property
    def keeps_decoded(self) -> bool:
        return self._decoded is not None

    def keep_decoded(self, threads: int = 1, progress: bool = False) -> None:
        """Decode and resize every rgb training image once (``threads`` at a time), keeping the
        uint8 S x S results in one array: every later item converts its image from there, the very
        tensor a read of the file gives (data/io.read_rgb). Depth maps are kept already."""
        if not has_rgb(self.mode) or self._decoded is not None:
            return
        decoded = DecodedImages(len(self.paths), self.img_size)
        decoded.fill(lambda i: read_rgb_resized(self.paths[i], self.img_size), threads, progress,
                     desc=f"[{self.category}] decoding {len(self.paths)} training images once")
        self._decoded = decoded

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.img_size
        parts: list[torch.Tensor] = []
        if has_rgb(self.mode):
            parts.append(network_rgb(self._decoded[i]) if self._decoded is not None else read_rgb(self.paths[i], s))
        if not has_depth(self.mode):
            fg = self.fg_masks[self._fg_index[i]].float() if self.fg_masks is not None else torch.ones(1, s, s)
        else:
            depth, plane = self._depth[i]
            assert self.depth_norm is not None
            parts.append(normalise_depth(depth, *self.depth_norm))
            fg = torch.from_numpy((plane * (depth != 0)).astype(np.float32))[None]
        return {"image": torch.cat(parts, dim=0), "fg": fg, "index": i}


def union_order(categories: Sequence[str]) -> list[str]:
    """Categories in the order of the original's sorted glob ``<root>/*/train/good/*``: by path,
    i.e. by name followed by "/" (so ``a-b/`` comes before ``a/``), each sorted by file name."""
    return sorted(dict.fromkeys(categories), key=lambda c: f"{c}/")


class UnionTrainDataset(ConcatDataset):
    """The training images of several categories as one set (-c train_multiclass, docs/method.md
    §10), in `union_order`; each part keeps its own foreground masks. Depth modes: one range over
    the union, the smallest gmin and the largest gmax of the parts (as one running min and max
    over all their raw tiffs), which every part then uses."""

    def __init__(self, parts: Sequence[TrainDataset]) -> None:
        order = union_order([p.category for p in parts])
        by_name = {p.category: p for p in parts}
        parts = [by_name[c] for c in order]
        super().__init__(parts)
        self.parts, self.categories = list(parts), order
        self.paths: list[Path] = [p for part in parts for p in part.paths]
        self.depth_norm: tuple[float, float] | None = None
        ranges = [p.depth_norm for p in parts if p.depth_norm is not None]
        if ranges:
            self.depth_norm = (min(r[0] for r in ranges), max(r[1] for r in ranges))
            for part in parts:
                part.depth_norm = self.depth_norm

    def __getitem__(self, i: int) -> dict[str, Any]:
        """The part's item, with ``class``: the index of its category in `categories`."""
        item = super().__getitem__(i)
        part = bisect.bisect_right(self.cumulative_sizes, i if i >= 0 else len(self) + i)
        return {**item, "class": part}


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
        samples: list[TestSample] | None = None,
    ) -> None:
        """``samples``: these images instead of the category's test set (e.g. its validation images)."""
        check_dataset(dataset)
        _check_mode(dataset, mode)
        self.dataset, self.category, self.mode = dataset, category, mode
        self.img_size = _check_size(img_size)
        if has_depth(mode) and depth_norm is None:
            raise TransFusionError(
                f"mode '{mode}' test set for '{category}' needs the training depth range (gmin, gmax); "
                f"take it from the training set or the checkpoint's saved depth_norm"
            )
        self.depth_norm = None if depth_norm is None else (float(depth_norm[0]), float(depth_norm[1]))
        self.samples: list[TestSample] = (find_test_samples(dataset, data_path, category) if samples is None
                                          else list(samples))
        if has_depth(mode):
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
        if sample.mask_path is not None:
            mask = read_mask(sample.mask_path, s, expected_hw=image_hw(sample.image_path))
        else:
            mask = torch.zeros(1, s, s)
        return {
            "image": model_input(sample.image_path, self.mode, s, self.depth_norm, sample.xyz_path),
            "mask": mask,
            "label": int(sample.label),
            "defect": sample.defect,
            "path": str(sample.image_path),
        }
