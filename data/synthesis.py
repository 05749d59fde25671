"""Synthetic anomalies for training (docs/method.md §2): Perlin-shaped masks filled with a texture or a
shuffled-tile copy of the image (rgb), or with a smooth depth bump/dent (d), or both (rgbd)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from data.augment import random_augment
from data.perlin import check_size, perlin_anomaly_map
from data.textures import TextureSource
from models.modes import IMAGE_CHANNELS, MODES, has_depth, has_rgb
from utils.core.errors import TransFusionError

MASK_THRESHOLD = 0.5
TILE_GRID = 8  # the structure image is shuffled as an 8 x 8 grid of tiles
DEPTH_SCALE = 0.1  # largest depth change, in normalised depth units
TEXTURE_PROB = 0.5  # else the "structure" image (the sample itself) is used


def shuffle_tiles(img: Tensor, rng: np.random.Generator, grid: int = TILE_GRID) -> Tensor:
    """Cut [C, H, W] into a grid x grid array of tiles and return them in a random permutation.

    H and W must be divisible by `grid` (guaranteed for S a multiple of 32).
    """
    c, h, w = img.shape
    if h % grid or w % grid:
        raise ValueError(f"shuffle_tiles: image {h}x{w} is not divisible into a {grid}x{grid} grid")
    th, tw = h // grid, w // grid
    # [C, gy, th, gx, tw] -> [gy*gx, C, th, tw]: one entry per tile, row-major over the grid.
    tiles = img.reshape(c, grid, th, grid, tw).permute(1, 3, 0, 2, 4).reshape(grid * grid, c, th, tw)
    tiles = tiles[torch.from_numpy(rng.permutation(grid * grid))]
    return tiles.reshape(grid, grid, c, th, tw).permute(2, 0, 3, 1, 4).reshape(c, h, w)


def choose_tau(p: np.ndarray, rng: np.random.Generator) -> float:
    """Threshold of the condition mask M_c = 1[|P| > tau], each case with probability 1/4:
    max(P), 0.5 + 0.5u (smaller than M), 0.5 (equal), 0.5 - 0.5u (larger), u ~ U[0, 1).

    The first case is the maximum of the SIGNED map, as in the released code: M_c is empty
    unless the deepest negative hill is deeper than the highest positive one, in which case
    part of that hill stays in M_c (about half the draws of this case).
    """
    case = int(rng.integers(4))
    u = float(rng.random())
    if case == 0:
        return float(p.max())
    if case == 1:
        return MASK_THRESHOLD + MASK_THRESHOLD * u
    if case == 2:
        return MASK_THRESHOLD
    return MASK_THRESHOLD - MASK_THRESHOLD * u


def to_uint8_image(rgb: Tensor) -> Tensor:
    """[3, S, S] in [-1, 1] -> uint8 0..255 (inverse of (v/255 - 0.5) * 2, rounded)."""
    return ((rgb.detach().float() * 0.5 + 0.5) * 255.0).round().clamp(0, 255).to(torch.uint8)


def depth_perturbation(p: np.ndarray) -> np.ndarray:
    """The depth change inside the mask, rising from 0 at the mask's edge (docs/method.md §2).

    Positive hills (P − 0.5 where P > 0.5) and negative ones (P + 0.5 where P < −0.5) are
    each divided by their own largest magnitude, so they span 0..1 and −1..0, times 0.1.
    """
    pos = np.where(p > MASK_THRESHOLD, p - MASK_THRESHOLD, 0.0)
    neg = np.where(p < -MASK_THRESHOLD, p + MASK_THRESHOLD, 0.0)
    top, bottom = float(pos.max()), float(-neg.min())
    if top > 0:
        pos = pos / top
    if bottom > 0:
        neg = neg / bottom
    return (pos + neg) * DEPTH_SCALE


class AnomalySynthesizer:
    """Makes one synthetic anomaly (eps, M, M_c) for a training sample, per docs/method.md §2.

    M_c is returned as synthesised; the training step zeroes it for samples whose t == T-1
    (it depends on t, which is drawn there, not here).
    """

    def __init__(self, mode: str, img_size: int, textures: TextureSource | None) -> None:
        """mode: 'rgb', 'd' or 'rgbd'; img_size: S (a multiple of 32); textures: None only for 'd'."""
        if mode not in MODES:
            raise TransFusionError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        check_size(img_size)
        if has_rgb(mode) and textures is None:
            raise ValueError(f"mode {mode!r} needs a TextureSource for anomaly appearances")
        self.mode = mode
        self.img_size = int(img_size)
        self.textures = textures
        self.channels = IMAGE_CHANNELS[mode]

    def _appearance(self, rgb: Tensor, rng: np.random.Generator) -> Tensor:
        """Anomaly appearance A in [-1, 1], [3, S, S]: augmented texture, or augmented and
        tile-shuffled copy of the sample itself."""
        use_texture = bool(rng.random() < TEXTURE_PROB)
        if use_texture:
            src = self.textures.sample(self.img_size, rng)  # type: ignore[union-attr]
        else:
            src = to_uint8_image(rgb)
        src = random_augment(src, rng, k=3)
        if not use_texture:
            src = shuffle_tiles(src, rng)
        return (src.to(torch.float32) / 255.0 - 0.5) * 2.0

    def __call__(self, image: Tensor, fg: Tensor, rng: np.random.Generator) -> dict[str, Tensor]:
        """image [C, S, S] float32 (rgb in [-1, 1]; depth normalised, 0 = missing), fg [1, S, S] 0/1.

        Returns float32 eps [C, S, S], mask [1, S, S] and mask_c [1, S, S]. eps is zero outside
        mask. An empty mask (tiny foreground, sparse noise) is allowed and gives eps = 0.
        """
        s = self.img_size
        if tuple(image.shape) != (self.channels, s, s):
            raise ValueError(f"mode {self.mode!r} expects image [{self.channels}, {s}, {s}], got {tuple(image.shape)}")
        if tuple(fg.shape) != (1, s, s):
            raise ValueError(f"fg must be [1, {s}, {s}], got {tuple(fg.shape)}")

        p = perlin_anomaly_map(s, rng)
        abs_p = np.abs(p)
        allowed = fg[0].detach().cpu().numpy() > 0.5
        if has_depth(self.mode):
            # No anomaly where the depth sensor gave no point.
            allowed = allowed & (image[-1].detach().cpu().numpy() != 0)
        mask_np = (abs_p > MASK_THRESHOLD) & allowed
        tau = choose_tau(p, rng)
        mask_c_np = (abs_p > tau) & allowed

        mask = torch.from_numpy(mask_np.astype(np.float32))[None]
        mask_c = torch.from_numpy(mask_c_np.astype(np.float32))[None]
        eps = torch.zeros((self.channels, s, s), dtype=torch.float32)
        if not mask_np.any():
            return {"eps": eps, "mask": mask, "mask_c": mask_c}

        if has_rgb(self.mode):
            eps[:3] = self._appearance(image[:3].detach().cpu(), rng) * mask
        if has_depth(self.mode):
            eps[-1] = torch.from_numpy(depth_perturbation(p).astype(np.float32)) * mask[0]
        return {"eps": eps, "mask": mask, "mask_c": mask_c}
