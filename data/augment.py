"""The ten appearance augmentations of the anomaly source (docs/method.md §2), as tensor ops.

Each op takes a uint8 tensor [3, H, W] and a numpy Generator and returns a new uint8 tensor
of the same shape. They reproduce the imgaug augmenters of the original code:

    GammaContrast((0.5, 2.0), per_channel=True), MultiplyAndAddToBrightness(mul=(0.8, 1.2),
    add=(-30, 30)), pillike.EnhanceSharpness(), AddToHueAndSaturation((-50, 50),
    per_channel=True), Solarize(0.5, threshold=(32, 128)), Posterize(), Invert(),
    pillike.Autocontrast(), pillike.Equalize(), Affine(rotate=(-45, 45))

All parameters are drawn from the Generator passed in, never from a global RNG, so that a
sample is reproducible from its seed regardless of DataLoader workers.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

AugOp = Callable[[Tensor, np.random.Generator], Tensor]


def _to_uint8(x: Tensor) -> Tensor:
    """Round and saturate a float image to uint8 (imgaug's uint8 arithmetic clips, it never wraps)."""
    return x.round().clamp_(0, 255).to(torch.uint8)


def _lookup(lut: Tensor, channel: Tensor) -> Tensor:
    """``lut[channel]`` for a 256-entry table and a uint8 channel, indexing with the uint8 values
    themselves (numpy takes them as indices; torch would first widen every pixel to int64)."""
    return torch.from_numpy(np.take(lut.numpy(), channel.numpy()))


def gamma_contrast(img: Tensor, rng: np.random.Generator) -> Tensor:
    """255 * (v/255)^gamma with gamma ~ U(0.5, 2.0) drawn independently per channel."""
    gammas = rng.uniform(0.5, 2.0, size=img.shape[0])
    base = torch.arange(256, dtype=torch.float64) / 255.0
    out = torch.empty_like(img)
    for c, g in enumerate(gammas):
        lut = _to_uint8(255.0 * base.pow(float(g)))  # a 256-entry table, as imgaug does for uint8
        out[c] = _lookup(lut, img[c])
    return out


# imgaug's MultiplyAndAddToBrightness draws one of these colour spaces per image and changes
# only its brightness channel (the index beside each), converting with OpenCV on uint8.
BRIGHTNESS_SPACES: tuple[tuple[str, int, int, int], ...] = (
    ("YCrCb", cv2.COLOR_RGB2YCrCb, cv2.COLOR_YCrCb2RGB, 0),
    ("HSV", cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2),
    ("HLS", cv2.COLOR_RGB2HLS, cv2.COLOR_HLS2RGB, 1),
    ("Lab", cv2.COLOR_RGB2Lab, cv2.COLOR_Lab2RGB, 0),
    ("Luv", cv2.COLOR_RGB2Luv, cv2.COLOR_Luv2RGB, 0),
    ("YUV", cv2.COLOR_RGB2YUV, cv2.COLOR_YUV2RGB, 0),
)


def brightness(img: Tensor, rng: np.random.Generator) -> Tensor:
    """Multiply the brightness channel by U(0.8, 1.2) and add U{-30..30}, in random order.

    The channel is that of a colour space drawn per image among YCrCb, HSV, HLS, Lab, Luv
    and YUV (imgaug's MultiplyAndAddToBrightness defaults); each step works on the uint8
    channel and saturates, as imgaug's Multiply and Add do.
    """
    _, to_space, from_space, channel = BRIGHTNESS_SPACES[int(rng.integers(len(BRIGHTNESS_SPACES)))]
    mul = rng.uniform(0.8, 1.2)
    add = int(rng.integers(-30, 31))
    mul_first = bool(rng.random() < 0.5)  # imgaug's random_order=True over (Multiply, Add)
    converted = cv2.cvtColor(np.ascontiguousarray(img.permute(1, 2, 0).numpy()), to_space)
    value = converted[..., channel].astype(np.float64)
    for step in (("mul", "add") if mul_first else ("add", "mul")):
        value = np.clip(np.round(value * mul) if step == "mul" else value + add, 0, 255)
    converted[..., channel] = value.astype(np.uint8)
    rgb = cv2.cvtColor(converted, from_space)
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def sharpness(img: Tensor, rng: np.random.Generator) -> Tensor:
    """PIL ImageEnhance.Sharpness with factor ~ U(0, 2) (imgaug pillike.EnhanceSharpness default)."""
    return F.adjust_sharpness(img, float(rng.uniform(0.0, 2.0)))


def _rgb_to_hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """RGB in [0, 1] -> hue in degrees [0, 360), saturation and value in [0, 1]."""
    r, g, b = x[0], x[1], x[2]
    v, _ = x.max(dim=0)
    mn, _ = x.min(dim=0)
    c = v - mn
    s = torch.where(v > 0, c / v.clamp_min(1e-12), torch.zeros_like(v))
    safe_c = c.clamp_min(1e-12)
    h = torch.where(
        v == r, (g - b) / safe_c, torch.where(v == g, 2.0 + (b - r) / safe_c, 4.0 + (r - g) / safe_c)
    )
    h = torch.where(c > 0, (h * 60.0) % 360.0, torch.zeros_like(h))
    return h, s, v


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Inverse of _rgb_to_hsv; returns RGB in [0, 1], shape [3, H, W]."""
    hp = (h % 360.0) / 60.0
    # The standard closed form: channel n takes v - v*s*max(0, min(k, 4-k, 1)), k = (n + h') mod 6.
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (n + hp) % 6.0
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out)


def hue_saturation(img: Tensor, rng: np.random.Generator) -> Tensor:
    """Add U{-50..50} to hue and (independently, per_channel=True) to saturation, imgaug units.

    imgaug's hue value v in [-255, 255] becomes int(v/255 * 180) on OpenCV's 0..180 hue scale
    (2 degrees per unit) and wraps around; saturation is shifted on 0..255 and clipped.
    """
    dh, ds = (int(v) for v in rng.integers(-50, 51, size=2))
    hue_units = int(dh / 255.0 * 180.0)
    h, s, v = _rgb_to_hsv(img.to(torch.float32) / 255.0)
    h = (h + 2.0 * hue_units) % 360.0
    s = (s + ds / 255.0).clamp(0.0, 1.0)
    return _to_uint8(_hsv_to_rgb(h, s, v) * 255.0)


def solarize(img: Tensor, rng: np.random.Generator) -> Tensor:
    """With probability 0.5 (the released code passes p=0.5 to imgaug's Solarize), invert
    every value >= a threshold ~ U(32, 128); otherwise the image is returned unchanged."""
    threshold = float(rng.uniform(32.0, 128.0))
    if rng.random() >= 0.5:
        return img.clone()
    return F.solarize(img, threshold)


def posterize(img: Tensor, rng: np.random.Generator) -> Tensor:
    """Keep the top U{1..8} bits of each value (imgaug Posterize() default, same as PIL)."""
    return F.posterize(img, int(rng.integers(1, 9)))


def invert(img: Tensor, rng: np.random.Generator) -> Tensor:
    """255 - v. (Takes rng only for a uniform op signature.)"""
    return F.invert(img)


def autocontrast(img: Tensor, rng: np.random.Generator) -> Tensor:
    """PIL ImageOps.autocontrast per channel with cutoff ~ U{0..20} percent (pillike default).

    PIL drops `n*cutoff//100` pixels from each end of the histogram, then maps the remaining
    [lo, hi] linearly onto [0, 255] with truncation; a flat channel is left unchanged.
    """
    cutoff = int(rng.integers(0, 21))
    n = img.shape[1] * img.shape[2]
    cut = n * cutoff // 100
    out = torch.empty_like(img)
    ramp = torch.arange(256, dtype=torch.float64)
    for c in range(img.shape[0]):
        hist = torch.from_numpy(np.bincount(img[c].numpy().reshape(-1), minlength=256))
        # First value whose cumulative count exceeds `cut`, from the bottom and from the top.
        lo = int(torch.searchsorted(hist.cumsum(0), cut, right=True))
        hi = 255 - int(torch.searchsorted(hist.flip(0).cumsum(0), cut, right=True))
        if hi <= lo:
            out[c] = img[c]
            continue
        scale = 255.0 / (hi - lo)
        lut = (ramp * scale - lo * scale).trunc().clamp(0, 255).to(torch.uint8)
        out[c] = _lookup(lut, img[c])
    return out


def equalize(img: Tensor, rng: np.random.Generator) -> Tensor:
    """Histogram equalisation per channel (same algorithm as PIL ImageOps.equalize)."""
    return F.equalize(img)


def rotate(img: Tensor, rng: np.random.Generator) -> Tensor:
    """Rotate by U(-45, 45) degrees about the centre, bilinear, zero fill (imgaug Affine defaults)."""
    return F.rotate(img, float(rng.uniform(-45.0, 45.0)), interpolation=F.InterpolationMode.BILINEAR, fill=0)


# The op list random_augment draws from; the order matches the original augmenter list.
AUGMENTATIONS: list[tuple[str, AugOp]] = [
    ("gamma_contrast", gamma_contrast),
    ("brightness", brightness),
    ("sharpness", sharpness),
    ("hue_saturation", hue_saturation),
    ("solarize", solarize),
    ("posterize", posterize),
    ("invert", invert),
    ("autocontrast", autocontrast),
    ("equalize", equalize),
    ("rotate", rotate),
]


def choose_augmentations(rng: np.random.Generator, k: int = 3) -> list[int]:
    """Indices into AUGMENTATIONS of k distinct ops, in the (random) order they are applied."""
    if not 0 <= k <= len(AUGMENTATIONS):
        raise ValueError(f"k must be in 0..{len(AUGMENTATIONS)}, got {k}")
    return [int(i) for i in rng.choice(len(AUGMENTATIONS), size=k, replace=False)]


def random_augment(img_uint8: Tensor, rng: np.random.Generator, k: int = 3) -> Tensor:
    """Apply k distinct augmentations, chosen and ordered at random (imgaug SomeOf(k, random_order))."""
    if img_uint8.dtype != torch.uint8 or img_uint8.ndim != 3 or img_uint8.shape[0] != 3:
        raise ValueError(f"random_augment expects a uint8 [3, H, W] tensor, got {img_uint8.dtype} {tuple(img_uint8.shape)}")
    out = img_uint8
    for i in choose_augmentations(rng, k):
        out = AUGMENTATIONS[i][1](out, rng)
    return out
