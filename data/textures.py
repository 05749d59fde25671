"""Anomaly appearance sources: the DTD texture set, or a small built-in bank that needs no download."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from data.catalog import DEMO_CATEGORIES, skimage_data_dir
from data.image_cache import DecodedImages, decoded_bytes
from data.perlin import rand_perlin_2d
from utils.core.errors import TransFusionError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# The demo builds its "normal" texture categories from these scikit-image samples, so the
# anomaly bank must not contain them (an anomaly would look like the normal surface).
EXCLUDED_SKIMAGE_STEMS = frozenset(DEMO_CATEGORIES)
PROCEDURAL_KINDS = ("stripes", "checkers", "blobs", "perlin_colour")


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES


def _load_rgb(path: Path) -> np.ndarray:
    """Read an image file as uint8 RGB [H, W, 3]; grey is replicated, alpha is composited on white."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, rgba)
            elif im.mode.startswith("I;16") or im.mode == "I":
                # 16/32-bit greyscale: PIL's RGB conversion would clip, so rescale to 8 bits first.
                arr = np.asarray(im, dtype=np.float64)
                span = max(float(arr.max() - arr.min()), 1e-12)
                im = Image.fromarray(((arr - arr.min()) / span * 255.0).round().astype(np.uint8))
            return np.array(im.convert("RGB"), dtype=np.uint8)  # a writable copy (torch warns on read-only)
    except (OSError, ValueError) as e:
        raise TransFusionError(
            f"cannot read texture image {path} ({e.__class__.__name__}: {e}): remove or replace the file"
        ) from None


def _random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3)).astype(np.float64)


def _procedural(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random procedural texture, uint8 RGB [size, size, 3]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if kind == "stripes":
        theta = rng.uniform(0.0, math.pi)
        period = rng.uniform(4.0, max(5.0, size / 3.0))
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) / period
        # Soft or hard edges, chosen at random, give both sinusoidal and bar-like stripes.
        w = 0.5 + 0.5 * np.sin(2.0 * math.pi * phase)
        if rng.random() < 0.5:
            w = (w > 0.5).astype(np.float64)
        c = _random_colours(rng, 2)
        out = c[0] * w[..., None] + c[1] * (1.0 - w[..., None])
    elif kind == "checkers":
        cell = rng.uniform(3.0, max(4.0, size / 4.0))
        theta = rng.uniform(0.0, math.pi / 2.0)
        u = (xx * math.cos(theta) + yy * math.sin(theta)) / cell
        v = (-xx * math.sin(theta) + yy * math.cos(theta)) / cell
        w = ((np.floor(u) + np.floor(v)) % 2.0)[..., None]
        c = _random_colours(rng, 2)
        out = c[0] * w + c[1] * (1.0 - w)
    elif kind == "blobs":
        n = int(rng.integers(5, 40))
        c = _random_colours(rng, n + 1)
        out = np.broadcast_to(c[0], (size, size, 3)).copy()
        for i in range(1, n + 1):
            cy, cx = rng.uniform(0, size, size=2)
            ry, rx = rng.uniform(size / 30.0, size / 5.0, size=2)
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            out[inside] = c[i]
    elif kind == "perlin_colour":
        # Perlin needs a size divisible by its lattice; generate a multiple of 16 and crop.
        n = int(math.ceil(size / 16.0) * 16)
        chans = []
        for _ in range(3):
            r = 2 ** int(rng.integers(0, 5))
            chans.append(rand_perlin_2d((n, n), (r, r), rng)[:size, :size])
        out = (np.stack(chans, axis=-1) * 0.5 + 0.5) * 255.0
    else:
        raise ValueError(f"unknown procedural texture kind {kind!r}")
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


class TextureSource:
    """A set of texture images (and optionally procedural generators) to draw anomaly appearances from."""

    def __init__(
        self,
        paths: Sequence[Path],
        description: str,
        procedural: Sequence[str] = (),
        cache: bool = False,
    ) -> None:
        """Prefer the `from_dtd` / `builtin` constructors. `cache` keeps the decoded images at
        their own size, as each is first drawn (a small bank); :meth:`keep_decoded` keeps all of
        them at the working size, decoded once."""
        self.paths = [Path(p) for p in paths]
        self.procedural = list(procedural)
        self.description = description
        self._cache: dict[int, np.ndarray] | None = {} if cache else None
        self._decoded: DecodedImages | None = None
        if len(self) == 0:
            raise TransFusionError(f"texture source '{description}' is empty: give it at least one image")

    @classmethod
    def from_dtd(cls, dtd_path: str | Path) -> "TextureSource":
        """All `<dtd_path>/images/<texture>/*.jpg` (dtd_path may also be the images folder itself)."""
        root = Path(dtd_path).expanduser()
        if not root.is_dir():
            raise TransFusionError(
                f"DTD folder {root} does not exist: pass --dtd-path pointing at the DTD root "
                f"(layout images/<texture>/*.jpg)"
            )
        images_dir = root / "images" if (root / "images").is_dir() else root
        paths = sorted(p for sub in images_dir.iterdir() if sub.is_dir() for p in sub.iterdir() if _is_image(p))
        if not paths:
            raise TransFusionError(
                f"no texture images found in {images_dir}: expected the DTD layout images/<texture>/*.jpg "
                f"under --dtd-path"
            )
        return cls(paths, f"DTD at {root} ({len(paths)} images)")

    @classmethod
    def builtin(cls, exclude: Collection[str] = ()) -> "TextureSource":
        """scikit-image's bundled sample images (minus brick, grass, gravel, and the stems in
        ``exclude``: the textures a generated dataset was cut from) plus procedural textures.

        The files are read straight from the installed package folder; skimage.data's fetchers
        are never called, so nothing is ever downloaded.
        """
        data_dir = skimage_data_dir()
        excluded = EXCLUDED_SKIMAGE_STEMS | {s.lower() for s in exclude}
        paths: list[Path] = []
        if data_dir is not None:
            paths = sorted(p for p in data_dir.iterdir() if _is_image(p) and p.stem.lower() not in excluded)
        desc = (
            f"built-in texture bank ({len(paths)} scikit-image samples + {len(PROCEDURAL_KINDS)} procedural; "
            f"pass --dtd-path for DTD)"
        )
        return cls(paths, desc, procedural=PROCEDURAL_KINDS, cache=True)

    def __len__(self) -> int:
        return len(self.paths) + len(self.procedural)

    def __repr__(self) -> str:
        return f"TextureSource({self.description})"

    def decoded_bytes(self, size: int) -> int:
        """The memory :meth:`keep_decoded` takes at ``size``: the texture images as uint8."""
        return decoded_bytes(len(self.paths), size)

    def keeps_decoded(self, size: int) -> bool:
        return self._decoded is not None and self._decoded.size == size

    def keep_decoded(self, size: int, threads: int = 1, progress: bool = False) -> None:
        """Decode every texture image once and keep it resized to ``size`` (as :meth:`sample`
        resizes it), so that samples at that size come from memory, the same pixels."""
        if self.keeps_decoded(size):
            return
        decoded = DecodedImages(len(self.paths), size)
        decoded.fill(lambda i: self._resized(i, size).permute(1, 2, 0).numpy(), threads, progress,
                     desc=f"decoding {len(self.paths)} texture images once")
        self._decoded = decoded
        if self._cache is not None:
            self._cache.clear()  # the full-size copies are not needed any more

    def _image(self, i: int) -> np.ndarray:
        if self._cache is None:
            return _load_rgb(self.paths[i])
        if i not in self._cache:
            self._cache[i] = _load_rgb(self.paths[i])
        return self._cache[i]

    def sample(self, size: int, rng: np.random.Generator) -> Tensor:
        """A random texture resized to size x size: uint8 [3, S, S].

        Bilinear without antialiasing, like cv2.resize(INTER_LINEAR) in the original code (done
        in torch: OpenCV's thread pool can deadlock in forked DataLoader workers).
        """
        i = int(rng.integers(len(self)))
        if i < len(self.paths) and self._decoded is not None and self._decoded.size == size:
            return torch.from_numpy(self._decoded[i].transpose(2, 0, 1).copy())  # a copy: the kept one is only read
        if i < len(self.paths):
            img = self._resized(i, size)
        else:
            img = torch.from_numpy(_procedural(self.procedural[i - len(self.paths)], size, rng)).permute(2, 0, 1)
        return img.contiguous()

    def _resized(self, i: int, size: int) -> Tensor:
        """Texture image ``i`` as uint8 [3, size, size]."""
        img = torch.from_numpy(self._image(i)).permute(2, 0, 1)
        if img.shape[1] != size or img.shape[2] != size:
            img = F.resize(img, [size, size], interpolation=F.InterpolationMode.BILINEAR, antialias=False)
        return img
