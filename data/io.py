"""Reading images and ground-truth masks exactly as docs/method.md §1 prescribes.

RGB: resize to S×S with PIL bilinear (what torchvision ``Resize`` does on a PIL
image), then ``(v/255 - 0.5) * 2``.  Masks: binarise (any non-zero → 255, since
VisA masks hold small values such as 1 and MVTec 3D-AD masks hold 253), resize
bilinearly, and call a pixel anomalous when its resized value is > 0.5 on the
0..255 scale.

Every failure to read a file becomes a one-line :class:`TransFusionError` that
names the file, because a bad file deep inside a dataset is otherwise a
multi-screen traceback from the middle of a DataLoader worker.
"""
from __future__ import annotations

import logging
import math
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image, ImageOps

from utils.core.errors import TransFusionError

__all__ = ["read_rgb", "read_rgb_resized", "network_rgb", "read_rgb_uint8", "rgb_array_input", "read_mask",
           "image_hw", "max_image_pixels", "pixel_limit"]


_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_EXIF_ORIENTATION_TAG = 0x0112

# Paths already warned about (mask size mismatch), so a dataset iterated for many
# epochs warns once per file rather than once per epoch.
_warned_mask_sizes: set[str] = set()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class TiffTooLarge(ValueError):
    """A TIFF whose header claims more values than the decoder's pixel limit (`pixel_limit`)."""

    def __init__(self, message: str, values: int) -> None:
        super().__init__(message)
        self.values = values


def pixel_limit() -> float | None:
    """The most pixels an image may have to be decoded: PIL refuses more than twice
    ``PIL.Image.MAX_IMAGE_PIXELS`` unread, as a possible decompression bomb (None: no limit);
    TIFFs read through tifffile are held to the same number of values."""
    most = Image.MAX_IMAGE_PIXELS
    return None if most is None else 2 * most


@contextmanager
def max_image_pixels(n: int) -> Iterator[None]:
    """Inside, images of up to ``n`` pixels are decoded (``--max-image-pixels``; in Python
    ``with data.io.max_image_pixels(n): ...``), without PIL's warning about the ones above half
    of it; the limit before is restored on the way out."""
    previous = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = n / 2  # PIL refuses what exceeds twice it, warns above it
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


_PIL_PIXELS = re.compile(r"\((\d+) pixels\)")


def too_many_pixels(path: str | os.PathLike, kind: str, exc: BaseException) -> TransFusionError | None:
    """The one-line error for an image refused for its size alone (PIL's decompression-bomb guard,
    or a TIFF header claiming too many values), saying how to raise the limit; None for any other
    failure."""
    if isinstance(exc, TiffTooLarge):
        count: int | None = exc.values
    elif isinstance(exc, Image.DecompressionBombError):
        found = _PIL_PIXELS.search(str(exc))
        count = int(found.group(1)) if found else None
    else:
        return None
    limit = pixel_limit()
    size = f"its {count:,} pixels exceed" if count else "it exceeds"
    raise_to = count if count else f"{2 * int(limit or 0)} (or more)"
    return TransFusionError(
        f"cannot read {kind} '{path}': {size} the decoder's pixel limit of {int(limit or 0):,} (PIL refuses larger "
        f"images unread, as possible decompression bombs); if you trust the file, raise the limit with "
        f"--max-image-pixels {raise_to} (in Python: with data.io.max_image_pixels({raise_to}): ...), or downscale "
        f"the image")


class _CollectLog(logging.Filter):
    """Keeps tifffile's log records (it logs damage to stderr) instead of letting them through."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(_one_line(record.getMessage()))
        return False


def read_tiff_checked(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """``tifffile.imread`` that refuses, before allocating, a header claiming more values than
    `pixel_limit` (a damaged or hostile header would otherwise allocate gigabytes). Returns the
    array and tifffile's log messages (damage it worked around)."""
    import tifffile

    log = logging.getLogger("tifffile")
    collect = _CollectLog()
    log.addFilter(collect)
    try:
        with tifffile.TiffFile(path) as tif:
            limit = pixel_limit()
            if tif.series and limit:
                shape = tuple(int(n) for n in tif.series[0].shape)
                if math.prod(shape) > limit:
                    raise TiffTooLarge(
                        f"the TIFF header claims an array of shape {shape}, more than the pixel limit "
                        f"({int(limit)}) values; refusing to allocate it", math.prod(shape)
                    )
            arr = np.asarray(tif.asarray())
    finally:
        log.removeFilter(collect)
    return arr, collect.messages


def _read_error(path: Path, kind: str, exc: BaseException) -> TransFusionError:
    too_large = too_many_pixels(path, kind, exc)
    if too_large is not None:
        return too_large
    if isinstance(exc, FileNotFoundError):
        reason = "file not found"
    elif isinstance(exc, IsADirectoryError):
        reason = "it is a directory"
    elif isinstance(exc, PermissionError):
        reason = "permission denied"
    else:
        reason = _one_line(f"{type(exc).__name__}: {exc}")
    return TransFusionError(
        f"cannot read {kind} '{path}': {reason}; expected a complete PNG/JPEG/TIFF image "
        f"(re-copy the file from the original dataset or remove it)"
    )


def _open(path: str | os.PathLike, kind: str) -> Image.Image:
    """Open and fully decode an image (so truncation is detected here, not later)."""
    p = Path(path)
    try:
        if p.is_file() and p.stat().st_size == 0:
            raise OSError("the file is empty (0 bytes)")
        with Image.open(p) as im:
            im.load()  # decode now: truncated data raises here, not in a DataLoader worker
            orientation = _orientation_of(im)
            if orientation in (None, 1):
                return im
            try:
                return ImageOps.exif_transpose(im)
            except Exception as exc:  # a broken EXIF block must not make the pixels unusable
                warnings.warn(f"{p}: ignoring unreadable EXIF orientation ({_one_line(exc)})", stacklevel=3)
                return im
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
        if p.suffix.lower() in {".tif", ".tiff"} and not isinstance(
            exc, (FileNotFoundError, IsADirectoryError, Image.DecompressionBombError)
        ):
            # PIL cannot decode some TIFF flavours (e.g. 16-bit RGB); tifffile can.
            return _open_tiff_fallback(p, kind, exc)
        raise _read_error(p, kind, exc) from exc


def _orientation_of(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(_EXIF_ORIENTATION_TAG)
    except Exception:
        return None


def _open_tiff_fallback(p: Path, kind: str, original: BaseException) -> Image.Image:
    try:
        arr, _ = read_tiff_checked(p)
    except TiffTooLarge as exc:
        raise _read_error(p, kind, exc) from exc
    except Exception:
        raise _read_error(p, kind, original) from original
    if arr.dtype.kind not in "biuf":
        raise TransFusionError(f"cannot read {kind} '{p}': TIFF of {arr.dtype} values; expected integer or float pixels")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] >= 3:
        arr = arr[..., :3]
    elif arr.ndim != 2:
        raise TransFusionError(f"cannot read {kind} '{p}': TIFF of shape {arr.shape}; expected HxW or HxWx3")
    if kind == "mask":
        # Binarise before any rescaling: a 16-bit mask holding 1 would otherwise round to 0.
        nonzero = np.nan_to_num(arr) != 0
        return Image.fromarray(np.where(nonzero.any(axis=2) if nonzero.ndim == 3 else nonzero, 255, 0).astype(np.uint8))
    arr8 = _to_uint8_range(arr)
    return Image.fromarray(arr8, mode="L" if arr8.ndim == 2 else "RGB")


def _to_uint8_range(arr: np.ndarray) -> np.ndarray:
    """Scale integer/float pixel data of any depth to 0..255 uint8."""
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float64)
    finite = a[np.isfinite(a)]  # NaN/inf must not decide the scale (nor make numpy warn)
    top = float(finite.max()) if finite.size else 0.0
    if arr.dtype == np.uint16 or (arr.dtype.kind in "iu" and a.size and top > 255):
        a = a / 257.0  # 65535 → 255 exactly, as docs/method.md §1 asks for 16-bit images
    elif arr.dtype.kind == "f" and top <= 1.0:
        a = a * 255.0  # float images conventionally hold 0..1
    elif arr.dtype.kind == "f" and top > 255.0:
        a = a / 257.0
    a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _as_8bit(im: Image.Image) -> Image.Image:
    """Any PIL mode → an 8-bit 'L' or 'RGB' image (alpha dropped, palettes expanded)."""
    mode = im.mode
    if mode in ("L", "RGB"):
        return im
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return Image.fromarray(_to_uint8_range(np.asarray(im)), mode="L")
    if mode in ("1", "LA", "La"):
        return im.convert("L")
    # P, PA, RGBA, RGBa, RGBX, CMYK, YCbCr, LAB, HSV... PIL converts all of them to RGB;
    # alpha is dropped rather than composited, like `Image.convert("RGB")` in the original.
    return im.convert("RGB")


def read_rgb_uint8(path: str | os.PathLike) -> np.ndarray:
    """Read an image at its own size as HxWx3 uint8 RGB (grayscale stacked to 3 channels)."""
    im = _as_8bit(_open(path, "image"))
    arr = np.asarray(im)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr)


def read_rgb(path: str | os.PathLike, size: int) -> torch.Tensor:
    """Read an image as a float32 [3, size, size] tensor in [-1, 1] (docs/method.md §1):
    :func:`network_rgb` of :func:`read_rgb_resized`."""
    return network_rgb(read_rgb_resized(path, size))


def read_rgb_resized(path: str | os.PathLike, size: int) -> np.ndarray:
    """The first half of :func:`read_rgb`: the image decoded, made 8-bit and resized to
    size x size, as uint8 [size, size, 3] (what the training set keeps in memory, so that every
    later epoch only runs :func:`network_rgb` on it and gets the very tensor a read gives)."""
    return _resized_uint8(_as_8bit(_open(path, "image")), size)


def rgb_array_input(rgb: np.ndarray, size: int, name: str = "image array") -> torch.Tensor:
    """An RGB uint8 HxWx3 array (e.g. a camera frame) as :func:`read_rgb` makes a file of the
    same pixels: the same PIL bilinear resize, the same [-1, 1] scaling."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or 0 in arr.shape:
        raise TransFusionError(
            f"{name}: got a {arr.dtype} array of shape {tuple(arr.shape)}; expected RGB uint8 HxWx3 (0..255, RGB "
            f"order: reverse OpenCV's BGR with [..., ::-1]), or a float tensor [B, C, S, S] already in [-1, 1]"
        )
    return network_rgb(_resized_uint8(Image.fromarray(np.ascontiguousarray(arr)), size))


def _resized_uint8(im: Image.Image, size: int) -> np.ndarray:
    """An 8-bit 'L' or 'RGB' PIL image, resized bilinearly on its 8-bit values as torchvision's
    ``Resize`` does on a PIL image, as uint8 [size, size, 3]. Grayscale is resized first and
    stacked afterwards: identical per channel and three times cheaper."""
    arr = np.asarray(im.resize((int(size), int(size)), Image.BILINEAR))
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr


def network_rgb(resized: np.ndarray) -> torch.Tensor:
    """uint8 [S, S, 3] -> the network's float32 [3, S, S] in [-1, 1]: ``(v/255 - 0.5) * 2``
    (docs/method.md §1), in float32 as the released code computes it."""
    arr = (np.asarray(resized, dtype=np.float32) / 255.0 - 0.5) * 2.0
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def image_hw(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image as :func:`read_rgb` sees it (after EXIF rotation).

    Reads only the header, so it is cheap enough to call per test sample.
    """
    p = Path(path)
    try:
        with Image.open(p) as im:
            w, h = im.size
            orientation = _orientation_of(im)
    except Exception as exc:
        if p.suffix.lower() in {".tif", ".tiff"} and p.is_file():
            im = _open(p, "image")  # TIFF flavours PIL cannot parse go through tifffile
            return int(im.height), int(im.width)
        raise _read_error(p, "image", exc) from exc
    if orientation in (5, 6, 7, 8):  # these orientations swap width and height
        w, h = h, w
    return int(h), int(w)


def _nonzero_mask(im: Image.Image) -> np.ndarray:
    """Boolean HxW: True where the mask file holds any non-zero value (max over colour channels)."""
    mode = im.mode
    if mode in ("LA", "La"):
        arr = np.asarray(im.getchannel(0))
    elif mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        # Palette indices are meaningless on their own; what a viewer (and cv2) shows is the colour.
        arr = np.asarray(im.convert("RGB"))
    else:
        arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)  # colour masks: any channel counts; alpha ignored
    return np.nan_to_num(arr) != 0


def read_mask_native(path: str | os.PathLike) -> np.ndarray:
    """A ground-truth mask at its own resolution: boolean H×W, True where the file holds any
    non-zero value (MVTec AD 2's metrics are taken at each image's own size, docs/method.md §11)."""
    return _nonzero_mask(_open(Path(path), "mask"))


def read_mask(
    path: str | os.PathLike, size: int, expected_hw: tuple[int, int] | None = None
) -> torch.Tensor:
    """Read a ground-truth mask as float32 [1, size, size] holding 0/1 (docs/method.md §1, §8).

    Binarise first (non-zero → 255; covers VisA's value-1 masks, MVTec 3D-AD's 253
    and 16-bit masks), bilinear resize, then anomalous iff resized value > 0.5.
    If ``expected_hw`` (the image's height, width) differs from the mask's size,
    warn once per file and resize anyway.
    """
    p = Path(path)
    im = _open(p, "mask")
    h, w = im.height, im.width
    if expected_hw is not None and (int(expected_hw[0]), int(expected_hw[1])) != (h, w):
        key = str(p.resolve()) if p.exists() else str(p)
        if key not in _warned_mask_sizes:
            _warned_mask_sizes.add(key)
            warnings.warn(
                f"{p}: mask is {h}x{w} but its image is {expected_hw[0]}x{expected_hw[1]}; "
                f"resizing the mask to {size}x{size} anyway",
                stacklevel=2,
            )
    binary = np.where(_nonzero_mask(im), 255, 0).astype(np.uint8)
    resized = Image.fromarray(binary, mode="L").resize((int(size), int(size)), Image.BILINEAR)
    out = (np.asarray(resized) > 0.5).astype(np.float32)
    return torch.from_numpy(out)[None]
