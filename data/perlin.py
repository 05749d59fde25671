"""2-D Perlin noise and the rotated Perlin map that shapes synthetic anomalies (docs/method.md §2)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from utils.core.errors import TransFusionError

# Scales are 2**a, 2**b with a, b in {0..MAX_SCALE_EXP}; 2**5 = 32 is why S must be a multiple of 32.
MAX_SCALE_EXP = 5
SIZE_MULTIPLE = 2**MAX_SCALE_EXP


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3 (zero first and second derivative at 0 and 1)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def rand_perlin_2d(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gradient (Perlin) noise of `shape` with `res` lattice cells per axis, float64 in [-1, 1].

    One random unit gradient per lattice point, quintic fade. The sum is scaled by sqrt(2)
    (as the DRAEM/TransFusion code does) so that values span about [-1, 1]; the 0.5 mask
    threshold of docs/method.md §2 is relative to that scale.
    """
    h, w = int(shape[0]), int(shape[1])
    ry, rx = int(res[0]), int(res[1])
    if ry < 1 or rx < 1 or h % ry or w % rx:
        raise ValueError(f"rand_perlin_2d: shape {shape} must be divisible by res {res}")
    dy, dx = h // ry, w // rx
    angles = 2.0 * math.pi * rng.random((ry + 1, rx + 1))
    gy, gx = np.cos(angles), np.sin(angles)  # unit gradient per lattice point, (row, column) parts

    # Laid out as [cell row, row in cell, cell column, column in cell], so that each lattice cell's
    # gradient broadcasts over its dy x dx pixels (no repeated copy of it) and the position inside
    # the cell is exact in integer arithmetic (no float drift over the image); the same float64
    # operations on the same values as a pixel-by-pixel evaluation, reshaped to [h, w] at the end.
    fy = (np.arange(dy) / dy)[None, :, None, None]
    fx = (np.arange(dx) / dx)[None, None, None, :]

    def corner(oy: int, ox: int) -> np.ndarray:
        # Dot product of the corner's gradient with the offset from that corner.
        sl = (slice(oy, oy + ry), slice(ox, ox + rx))
        return gy[sl][:, None, :, None] * (fy - oy) + gx[sl][:, None, :, None] * (fx - ox)

    n00, n10, n01, n11 = corner(0, 0), corner(1, 0), corner(0, 1), corner(1, 1)
    ty, tx = _fade(fy), _fade(fx)
    top = n00 + ty * (n10 - n00)
    bottom = n01 + ty * (n11 - n01)
    return (math.sqrt(2.0) * (top + tx * (bottom - top))).reshape(h, w)


# The largest working size the command line accepts: far above what the network runs at in
# practice (256), low enough that a mistyped or hostile value fails here, not in an allocation.
MAX_IMAGE_SIZE = 2048


# The working-size rule in words, for messages about a size that breaks it.
SIZE_RULE = f"a multiple of {SIZE_MULTIPLE} in {SIZE_MULTIPLE}..{MAX_IMAGE_SIZE}"


def is_valid_size(size: object) -> bool:
    """Whether ``size`` is an integer that is a multiple of 32 (the Perlin scales need it) in
    32..MAX_IMAGE_SIZE: the one home of the working-size rule."""
    return not isinstance(size, bool) and isinstance(size, int) and SIZE_MULTIPLE <= size <= MAX_IMAGE_SIZE \
        and size % SIZE_MULTIPLE == 0


def check_size(size: int) -> None:
    """Raise TransFusionError unless ``size`` keeps the working-size rule (`is_valid_size`)."""
    if not is_valid_size(size):
        raise TransFusionError(
            f"image size {size!r} is not {SIZE_RULE}: "
            f"anomaly synthesis needs --img-size to be a multiple of {SIZE_MULTIPLE} (e.g. 256)")


def rotate_map(p: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotate a 2-D map about its centre, bilinear, zero fill (as imgaug's Affine(rotate)); float32.

    Done with torch rather than OpenCV: OpenCV's thread pool can deadlock in forked DataLoader
    workers once the parent process has used it.
    """
    t = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32))[None]
    out = F.rotate(t, float(angle_deg), interpolation=F.InterpolationMode.BILINEAR, fill=0.0)
    return out[0].numpy()


def perlin_anomaly_map(size: int, rng: np.random.Generator) -> np.ndarray:
    """The docs/method.md §2 Perlin map: size x size float32 noise with scales (2^a, 2^b), a, b ~ U{0..5},
    rotated by an angle ~ U(-90, 90) degrees about the centre (bilinear, zero fill)."""
    check_size(size)
    a, b = rng.integers(0, MAX_SCALE_EXP + 1, size=2)
    p = rand_perlin_2d((size, size), (2 ** int(a), 2 ** int(b)), rng)
    angle = rng.uniform(-90.0, 90.0)
    return rotate_map(p, angle)
