"""Never crash on bad input: malformed images, masks and point clouds thrown at data/io.py and
data/depth.py (the rules: tests/fixtures/fuzzing.py)."""

import resource
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from data.depth import depth_range, normalise_depth, preprocess_depth, read_xyz
from data.io import image_hw, read_mask, read_rgb, read_rgb_uint8
from tests.fixtures.fuzzing import (
    READERS,
    SCENE,
    VALID,
    check_mask,
    check_rgb,
    clean_error,
    fuzz,
    no_leaked_internal_warnings,
    png_claiming,
)
from tests.fixtures.layouts import xyz_scene
from utils.core.errors import TransFusionError

# ----------------------------------------------------------------------------- broken images


@fuzz(30)
@given(ext=st.sampled_from(sorted(VALID)), frac=st.floats(0.0, 1.0), reader=st.sampled_from(sorted(READERS)))
def test_truncated_image_is_an_error_or_complete(tmp_path: Path, ext: str, frac: float, reader: str) -> None:
    data = VALID[ext]
    cut = min(int(frac * len(data)), len(data) - 1)
    p = tmp_path / f"cut.{ext}"
    p.write_bytes(data[:cut])
    full = tmp_path / f"full.{ext}"
    full.write_bytes(data)
    with no_leaked_internal_warnings():
        try:
            got = READERS[reader](p)
        except TransFusionError as exc:
            clean_error(exc, p)
            return
    # Loading a cut file is only acceptable when nothing that matters was cut (e.g. PNG's IEND).
    want = READERS[reader](full)
    if isinstance(got, torch.Tensor):
        assert torch.equal(got, want), f"{ext} cut at {cut}/{len(data)} loaded different pixels"
    else:
        assert got == want


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("name", ["empty.png", "empty.jpg", "empty.tiff"])
def test_zero_size_file(tmp_path: Path, reader: str, name: str) -> None:
    p = tmp_path / name
    p.write_bytes(b"")
    with pytest.raises(TransFusionError) as info:
        READERS[reader](p)
    clean_error(info.value, p)


SIGNATURES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"II*\x00", b"MM\x00*", b"BM", b"GIF89a"]


@fuzz(40)
@given(prefix=st.sampled_from(SIGNATURES), body=st.binary(max_size=300),
       ext=st.sampled_from(["png", "jpg", "JPG", "tiff", "bmp"]), reader=st.sampled_from(sorted(READERS)))
def test_random_bytes_with_an_image_name(tmp_path: Path, prefix: bytes, body: bytes, ext: str, reader: str) -> None:
    p = tmp_path / f"noise.{ext}"
    p.write_bytes(prefix + body)
    with no_leaked_internal_warnings():
        try:
            got = READERS[reader](p)
        except TransFusionError as exc:
            clean_error(exc, p)
            return
    # Some random bytes do form a (tiny) valid image, e.g. a BMP/GIF header: then it must be sane.
    if reader == "rgb":
        check_rgb(got, 16)
    elif reader == "mask":
        check_mask(got, 16)
    else:
        assert all(isinstance(v, int) and v > 0 for v in got)


@fuzz(40)
@given(ext=st.sampled_from(sorted(VALID)),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6),
       reader=st.sampled_from(["rgb", "mask"]))
def test_corrupted_image_bytes(tmp_path: Path, ext: str, flips: list[tuple[float, int]], reader: str) -> None:
    data = bytearray(VALID[ext])
    for where, value in flips:
        data[int(where * len(data))] = value
    p = tmp_path / f"flipped.{ext}"
    p.write_bytes(bytes(data))
    with no_leaked_internal_warnings():
        try:
            got = READERS[reader](p)
        except TransFusionError as exc:
            clean_error(exc, p)
            return
    # JPEG has no checksum, so damaged pixels may decode "fine": they must still be well formed.
    (check_rgb if reader == "rgb" else check_mask)(got, 16)


def _tiff_claiming(width: int, height: int, samples: int, bits: int, sample_format: int) -> bytes:
    """A classic little-endian TIFF header claiming width x height x samples, with 16 bytes of data."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, bits), (259, 3, 1), (262, 3, 1 if samples == 1 else 2),
               (273, 4, 8), (277, 3, samples), (278, 4, height), (279, 4, 16), (284, 3, 1), (339, 3, sample_format)]
    out = b"II*\x00" + struct.pack("<I", 24) + b"\x00" * 16 + struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    return out + b"\x00\x00\x00\x00"


@contextmanager
def address_space_limited(headroom: int = 1_500_000_000) -> Iterator[None]:
    """Fail any allocation of more than ~headroom bytes beyond what the process already maps."""
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vm + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to cap memory")
@pytest.mark.parametrize("name, payload, readers", [
    ("bomb.png", png_claiming(60000, 60000), ("rgb", "mask", "hw")),
    ("bomb.tiff", _tiff_claiming(60000, 60000, 1, 8, 1), ("rgb", "mask", "hw", "xyz")),
    ("bomb_xyz.tiff", _tiff_claiming(60000, 60000, 3, 32, 3), ("rgb", "mask", "hw", "xyz")),
])
def test_huge_dimension_header_is_refused_without_allocating(tmp_path: Path, name: str, payload: bytes,
                                                             readers: tuple[str, ...]) -> None:
    p = tmp_path / name
    p.write_bytes(payload)
    calls = {**READERS, "xyz": read_xyz}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for reader in readers:
        with address_space_limited(), pytest.raises(TransFusionError) as info:
            calls[reader](p)
        msg = clean_error(info.value, p)
        # refused up front, not a MemoryError turned into an error after trying
        assert "the decoder's pixel limit" in msg and "--max-image-pixels" in msg, msg
        assert "MemoryError" not in msg and "allocate" not in msg.replace("refusing to allocate", "")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200_000  # KiB


# ----------------------------------------------------------------------------- odd but valid images


def _mode_image(mode: str) -> tuple[Image.Image, tuple[int, int, int]]:
    """A 9x7 constant image in ``mode`` and the 8-bit RGB colour it must load as."""
    w, h = 7, 9
    if mode == "1":
        return Image.new("1", (w, h), 1), (255, 255, 255)
    if mode == "L":
        return Image.new("L", (w, h), 128), (128, 128, 128)
    if mode == "LA":
        return Image.new("LA", (w, h), (90, 0)), (90, 90, 90)  # alpha dropped, not composited
    if mode == "P":
        im = Image.new("P", (w, h), 1)
        im.putpalette([0, 0, 0, 10, 200, 30] + [0] * (254 * 3))
        return im, (10, 200, 30)
    if mode == "RGBA":
        return Image.new("RGBA", (w, h), (10, 20, 30, 0)), (10, 20, 30)
    if mode == "I;16":
        return Image.fromarray(np.full((h, w), 100 * 257, np.uint16)), (100, 100, 100)
    if mode == "I":
        return Image.fromarray(np.full((h, w), 100, np.int32)), (100, 100, 100)
    if mode == "F":
        return Image.fromarray(np.full((h, w), 0.4, np.float32)), (102, 102, 102)  # 0..1 float: * 255
    if mode == "CMYK":
        return Image.new("CMYK", (w, h), (0, 255, 255, 0)), (255, 0, 0)
    raise AssertionError(mode)


@pytest.mark.parametrize("mode, ext", [
    ("1", "png"), ("L", "png"), ("LA", "png"), ("P", "png"), ("P", "bmp"), ("RGBA", "png"),
    ("I;16", "png"), ("I;16", "tiff"), ("I", "tiff"), ("F", "tiff"), ("CMYK", "jpg"), ("CMYK", "tiff"),
])
def test_odd_modes_load_as_rgb_with_the_right_values(tmp_path: Path, mode: str, ext: str) -> None:
    im, rgb = _mode_image(mode)
    p = tmp_path / f"{mode.replace(';', '_')}.{ext}"
    im.save(p)
    with no_leaked_internal_warnings():
        t = read_rgb(p, 16)
        assert image_hw(p) == (9, 7)
    check_rgb(t, 16)
    want = (np.asarray(rgb, np.float32) / 255.0 - 0.5) * 2.0
    tol = 6 / 255 if ext == "jpg" else 1e-6  # JPEG is lossy even on flat colour
    np.testing.assert_allclose(t.numpy().reshape(3, -1).mean(axis=1), want, atol=tol)
    assert float(t.std(dim=(1, 2)).max()) <= tol * 2


def test_sixteen_bit_rgb_png_keeps_channel_order_and_scale(tmp_path: Path) -> None:
    import cv2

    rgb = np.zeros((6, 5, 3), np.uint16)
    rgb[...] = (10 * 257, 200 * 257, 30 * 257)
    p = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(p), np.ascontiguousarray(rgb[..., ::-1]))  # cv2 writes BGR
    with no_leaked_internal_warnings():
        t = read_rgb(p, 8)
    want = (np.array([10, 200, 30], np.float32) / 255.0 - 0.5) * 2.0
    np.testing.assert_allclose(t.numpy().reshape(3, -1), np.repeat(want[:, None], 64, axis=1), atol=1e-6)


@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf, "all nan"])
def test_float_tiff_with_non_finite_pixels(tmp_path: Path, fill: float | str) -> None:
    arr = np.full((6, 5), 0.5, np.float32)
    if fill == "all nan":
        arr[...] = np.nan
    else:
        arr[2:4, 1:3] = fill
    p = tmp_path / "float.tiff"
    tifffile.imwrite(p, arr)
    with no_leaked_internal_warnings():
        t = read_rgb(p, 5)
        m = read_mask(p, 5)
    check_rgb(t, 5)
    check_mask(m, 5)
    if fill != "all nan":
        # the finite pixels keep the 0..1 float convention (a stray inf must not rescale them)
        assert abs(float(t[0, 0, 0]) - (128 / 255 - 0.5) * 2) < 1e-6


def test_complex_tiff_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "complex.tiff"
    tifffile.imwrite(p, np.ones((6, 5), np.complex64))
    for reader in (READERS["rgb"], READERS["hw"]):
        with no_leaked_internal_warnings(), pytest.raises(TransFusionError) as info:
            reader(p)
        clean_error(info.value, p)


# Where the stored image's left half ends up once the EXIF orientation is applied.
EXIF_LEFT_GOES = {1: "left", 2: "right", 3: "right", 4: "left", 5: "top", 6: "top", 7: "bottom", 8: "bottom"}


@pytest.mark.parametrize("orientation", sorted(EXIF_LEFT_GOES))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    stored = np.zeros((20, 40, 3), np.uint8)  # 20 high, 40 wide
    stored[:, :20] = (230, 20, 20)  # left half red
    stored[:, 20:] = (20, 20, 230)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / f"rot{orientation}.jpg"
    Image.fromarray(stored).save(p, quality=95, exif=exif.tobytes())
    t = read_rgb(p, 16).numpy()
    red = t[0] > t[2]  # [16, 16]: where the pixel is red rather than blue
    where = EXIF_LEFT_GOES[orientation]
    region = {"left": (slice(None), slice(0, 6)), "right": (slice(None), slice(10, 16)),
              "top": (slice(0, 6), slice(None)), "bottom": (slice(10, 16), slice(None))}
    opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}[where]
    assert red[region[where]].all() and not red[region[opposite]].any(), (orientation, red.astype(int))
    assert image_hw(p) == ((40, 20) if orientation >= 5 else (20, 40))
    assert read_rgb_uint8(p).shape[:2] == image_hw(p)  # the full-size reader turns the same way


def test_broken_exif_block_still_loads(tmp_path: Path) -> None:
    p = tmp_path / "badexif.jpg"
    Image.fromarray(SCENE).save(p, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff garbage")
    with no_leaked_internal_warnings():
        t = read_rgb(p, 16)
        hw = image_hw(p)
    check_rgb(t, 16)
    assert hw == (24, 20)


@fuzz(25)
@given(h=st.one_of(st.integers(1, 4), st.sampled_from([300, 1000])),
       w=st.one_of(st.integers(1, 4), st.sampled_from([300, 1000])),
       colour=st.tuples(*[st.integers(0, 255)] * 3), size=st.sampled_from([8, 32]))
def test_tiny_and_thin_images(tmp_path: Path, h: int, w: int, colour: tuple[int, int, int], size: int) -> None:
    p = tmp_path / "thin.png"
    Image.new("RGB", (w, h), colour).save(p)
    t = read_rgb(p, size)
    check_rgb(t, size)
    want = (np.asarray(colour, np.float32) / 255.0 - 0.5) * 2.0
    np.testing.assert_allclose(t.numpy(), np.broadcast_to(want[:, None, None], t.shape), atol=1e-6)
    assert image_hw(p) == (h, w)
    m = read_mask(p, size)
    assert bool((m == (1.0 if any(colour) else 0.0)).all())


# ----------------------------------------------------------------------------- masks


def _expected_mask(nonzero: np.ndarray, size: int) -> np.ndarray:
    """docs/method.md §1/§8 stated independently: binarise to 0/255, PIL bilinear resize, > 0.5."""
    im = Image.fromarray(np.where(nonzero, 255, 0).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return (np.asarray(im) > 0.5).astype(np.float32)


def _mask_file(values: np.ndarray, kind: str, channel: int) -> Image.Image:
    """Encode a uint8 HxW ``values`` as a mask of the given kind; non-zero values stay non-zero."""
    if kind == "L":
        return Image.fromarray(values)
    if kind == "colour":
        rgb = np.zeros(values.shape + (3,), np.uint8)
        rgb[..., channel] = values
        return Image.fromarray(rgb)
    if kind == "P":
        im = Image.fromarray(values, mode="L").convert("P")  # indices = values
        pal = [0, 0, 0] + [v for i in range(1, 256) for v in (i, 255 - i, 7)]  # only index 0 is black
        im.putpalette(pal)
        return im
    if kind == "I;16":
        return Image.fromarray(values.astype(np.uint16) * (257 if channel else 1))
    if kind == "1":
        return Image.fromarray(values != 0)
    if kind == "LA":
        alpha = np.full_like(values, 255 if channel else 0)
        return Image.fromarray(np.stack([values, alpha], axis=2), mode="LA")
    raise AssertionError(kind)


@fuzz(40)
@given(values=arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)),
                     elements=st.sampled_from([0, 0, 1, 7, 253, 255])),
       kind=st.sampled_from(["L", "colour", "P", "I;16", "1", "LA"]), channel=st.integers(0, 2),
       size=st.sampled_from([8, 16]))
def test_masks_of_any_mode_binarise_then_resize(tmp_path: Path, values: np.ndarray, kind: str, channel: int,
                                                size: int) -> None:
    p = tmp_path / "mask.png"
    _mask_file(values, kind, channel).save(p)
    with no_leaked_internal_warnings():
        got = read_mask(p, size)
    check_mask(got, size)
    np.testing.assert_array_equal(got[0].numpy(), _expected_mask(values != 0, size))


def test_all_zero_mask_is_all_zero(tmp_path: Path) -> None:
    for mode in ("L", "RGB", "I;16", "1", "P"):
        p = tmp_path / f"zero_{mode.replace(';', '_')}.png"
        Image.new(mode, (13, 11), 0).save(p)
        assert not read_mask(p, 16).any()


def test_mask_of_the_wrong_size_warns_once_and_is_resized(tmp_path: Path) -> None:
    nonzero = np.zeros((10, 12), bool)
    nonzero[2:6, 3:9] = True
    p = tmp_path / "small_mask.png"
    Image.fromarray(nonzero.astype(np.uint8) * 255).save(p)
    with pytest.warns(UserWarning) as rec:
        got = read_mask(p, 16, expected_hw=(40, 48))
    assert len(rec) == 1 and str(p) in str(rec[0].message) and "\n" not in str(rec[0].message)
    np.testing.assert_array_equal(got[0].numpy(), _expected_mask(nonzero, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # second read of the same file: no second warning
        read_mask(p, 16, expected_hw=(40, 48))
        read_mask(p, 16, expected_hw=(10, 12))


# ----------------------------------------------------------------------------- xyz point clouds


def write_tiff(p: Path, arr: np.ndarray) -> Path:
    if arr.ndim == 1:  # stored as one row; tifffile's shape metadata makes it read back as 1-D
        tifffile.imwrite(p, arr[None], metadata={"shape": list(arr.shape)})
        return p
    contig = arr.ndim == 3 and arr.shape[-1] in (3, 4)
    tifffile.imwrite(p, arr, photometric="minisblack", planarconfig="contig" if contig else None)
    return p


@pytest.mark.parametrize("shape", [(20, 20), (20, 20, 4), (20, 20, 1), (20, 20, 2), (60,), (3, 20, 20)])
def test_xyz_of_the_wrong_shape(tmp_path: Path, shape: tuple[int, ...]) -> None:
    p = write_tiff(tmp_path / "wrong.tiff", np.ones(shape, np.float32))
    with pytest.raises(TransFusionError) as info:
        read_xyz(p)
    assert "HxWx3" in clean_error(info.value, p)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.complex64])
def test_xyz_of_a_non_float_dtype_is_refused(tmp_path: Path, dtype: Any) -> None:
    # integer "coordinates" are an RGB image saved as .tiff far more often than a point cloud
    p = write_tiff(tmp_path / "int.tiff", (xyz_scene(16, 0) * 100).astype(dtype))
    with pytest.raises(TransFusionError) as info:
        read_xyz(p)
    assert "float32" in clean_error(info.value, p)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_xyz_of_another_float_dtype_is_read_as_float32(tmp_path: Path, dtype: Any) -> None:
    xyz = xyz_scene(16, 0)
    p = write_tiff(tmp_path / "f.tiff", xyz.astype(dtype))
    with no_leaked_internal_warnings() as rec:
        got = read_xyz(p)
    assert not rec
    assert got.dtype == np.float32 and got.shape == xyz.shape
    np.testing.assert_array_equal(got, xyz.astype(dtype).astype(np.float32))


@fuzz(20)
@given(bad=arrays(np.uint8, (12, 12), elements=st.sampled_from([0, 0, 0, 1, 2, 3])), axis=st.integers(0, 2))
def test_xyz_nan_and_inf_are_missing_points_with_a_warning(tmp_path: Path, bad: np.ndarray, axis: int) -> None:
    xyz = xyz_scene(12, 2, n_missing=0)
    xyz[bad == 1, axis] = np.nan
    xyz[bad == 2, axis] = np.inf
    xyz[bad == 3, axis] = -np.inf
    p = write_tiff(tmp_path / "nan.tiff", xyz)
    n_bad = int((bad != 0).sum())
    with no_leaked_internal_warnings() as rec:
        got = read_xyz(p)
        depth, plane = preprocess_depth(got, 8, name=str(p))
        norm = normalise_depth(depth, *depth_range([depth]))
    nan_warnings = [w for w in rec if "NaN/inf" in str(w.message)]
    if n_bad:
        assert len(nan_warnings) == 1 and str(p) in str(nan_warnings[0].message)
        assert f" {n_bad} point" in str(nan_warnings[0].message)
    else:
        assert not nan_warnings
    assert np.isfinite(got).all() and (got[bad != 0] == 0).all()
    assert np.isfinite(depth).all() and np.isfinite(plane).all() and torch.isfinite(norm).all()


def test_all_zero_xyz_warns_and_gives_empty_depth(tmp_path: Path) -> None:
    p = write_tiff(tmp_path / "zeros.tiff", np.zeros((16, 16, 3), np.float32))
    with pytest.warns(UserWarning, match="background plane"):
        depth, plane = preprocess_depth(read_xyz(p), 8, name=str(p))
    assert not depth.any() and not plane.any()
    assert not normalise_depth(depth, *depth_range([depth])).any()


@fuzz(25)
@given(frac=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_xyz(tmp_path: Path, frac: float) -> None:
    data = (tmp_path / "full.tiff").read_bytes() if (tmp_path / "full.tiff").exists() else \
        write_tiff(tmp_path / "full.tiff", xyz_scene(16, 0)).read_bytes()
    p = tmp_path / "cut.tiff"
    p.write_bytes(data[: int(frac * len(data))])
    with no_leaked_internal_warnings():
        with pytest.raises(TransFusionError) as info:
            read_xyz(p)
    clean_error(info.value, p)


def test_damaged_xyz_does_not_log_to_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    # 8 bytes: a TIFF header pointing at an IFD that is not there; tifffile logs about it
    data = write_tiff(tmp_path / "full.tiff", xyz_scene(16, 0)).read_bytes()
    p = tmp_path / "header_only.tiff"
    p.write_bytes(data[:8])
    with pytest.raises(TransFusionError) as info:
        read_xyz(p)
    clean_error(info.value, p)
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]
    assert capfd.readouterr().err == ""


finite32 = st.floats(float(np.float32(-1e30)), float(np.float32(1e30)), allow_nan=False, allow_infinity=False,
                     width=32)


@fuzz(30)
@given(xyz=arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 12), st.just(3)),
                  elements=st.one_of(st.just(0.0), finite32)),
       size=st.sampled_from([8, 16]))
def test_preprocess_depth_never_produces_nan(xyz: np.ndarray, size: int) -> None:
    with no_leaked_internal_warnings():
        depth, plane = preprocess_depth(xyz, size, name="fuzz.tiff")
        norm = normalise_depth(depth, *depth_range([depth]))
    assert depth.shape == plane.shape == (size, size)
    assert np.isfinite(depth).all() and set(np.unique(plane).tolist()) <= {0.0, 1.0}
    assert torch.isfinite(norm).all() and float(norm.max()) <= 0.0  # z <= gmax always
