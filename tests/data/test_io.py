"""data.io: RGB and mask reading as docs/method.md §1 prescribes, and clean errors for bad files."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.io import image_hw, max_image_pixels, pixel_limit, read_mask, read_rgb, read_rgb_uint8
from tests.fixtures.fuzzing import png_claiming
from tests.fixtures.helpers import SHARED
from tests.fixtures.layouts import defect_mask, scene
from utils.core.errors import TransFusionError

BOTTLE = SHARED / "data" / "mvtec_ad" / "bottle"
needs_bottle = pytest.mark.skipif(not BOTTLE.is_dir(), reason=f"real MVTec bottle slice not found at {BOTTLE}")


def _expected_rgb(arr: np.ndarray, size: int) -> np.ndarray:
    """Independent statement of docs/method.md §1: PIL bilinear resize then (v/255 - 0.5) * 2, CHW."""
    im = Image.fromarray(arr).resize((size, size), Image.BILINEAR)
    return ((np.asarray(im, np.float32) / 255.0 - 0.5) * 2.0).transpose(2, 0, 1)


def test_read_rgb_matches_spec_formula(tmp_path: Path) -> None:
    arr = scene(48, 0)
    p = tmp_path / "x.png"
    Image.fromarray(arr).save(p)
    t = read_rgb(p, 32)
    assert t.dtype == torch.float32 and t.shape == (3, 32, 32)
    np.testing.assert_allclose(t.numpy(), _expected_rgb(arr, 32), atol=1e-6)
    assert -1.0 <= float(t.min()) and float(t.max()) <= 1.0


def test_read_rgb_extremes_map_to_minus_one_and_one(tmp_path: Path) -> None:
    arr = np.zeros((16, 16, 3), np.uint8)
    arr[:, 8:] = 255
    p = tmp_path / "bw.png"
    Image.fromarray(arr).save(p)
    t = read_rgb(p, 16)
    assert torch.all(t[:, :, :7] == -1.0) and torch.all(t[:, :, 9:] == 1.0)


def test_grayscale_is_stacked_to_three_identical_channels(tmp_path: Path) -> None:
    gray = scene(40, 1)[..., 0]
    p = tmp_path / "g.png"
    Image.fromarray(gray, mode="L").save(p)
    t = read_rgb(p, 32)
    assert t.shape == (3, 32, 32)
    assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
    expected = _expected_rgb(np.repeat(gray[..., None], 3, axis=2), 32)
    np.testing.assert_allclose(t.numpy(), expected, atol=1e-6)


def test_rgba_la_and_palette_become_rgb(tmp_path: Path) -> None:
    arr = scene(32, 2)
    rgba = np.concatenate([arr, np.full((32, 32, 1), 7, np.uint8)], axis=2)  # almost transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    # Alpha is dropped, not composited: the colour values must come through unchanged.
    np.testing.assert_array_equal(read_rgb_uint8(tmp_path / "a.png"), arr)

    Image.fromarray(arr[..., 0], mode="L").convert("LA").save(tmp_path / "la.png")
    assert read_rgb(tmp_path / "la.png", 16).shape == (3, 16, 16)

    pal = Image.fromarray(arr).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(read_rgb_uint8(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))


def test_sixteen_bit_grayscale_scaled_by_257(tmp_path: Path) -> None:
    values = (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)  # 0..255 scaled to 16 bit
    p = tmp_path / "g16.png"
    Image.fromarray(values).save(p)
    assert Image.open(p).mode.startswith("I")
    got = read_rgb_uint8(p)[..., 0]
    np.testing.assert_array_equal(got, (values // 257).astype(np.uint8))
    t = read_rgb(p, 16)
    np.testing.assert_allclose(t[0].numpy(), (values / 257.0 / 255.0 - 0.5) * 2.0, atol=1e-6)


@pytest.mark.parametrize("reader", [lambda p: read_rgb(p, 16), lambda p: read_mask(p, 16), read_rgb_uint8])
def test_truncated_png_raises_transfusion_error_naming_file(tmp_path: Path, reader) -> None:
    p = tmp_path / "broken.png"
    Image.fromarray(scene(64, 3)).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(TransFusionError) as info:
        reader(p)
    msg = str(info.value)
    assert str(p) in msg and "\n" not in msg


def test_empty_missing_and_non_image_files_raise(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image at all\nsecond line\n")
    missing = tmp_path / "nope.png"
    for p in (empty, text, missing, tmp_path):
        with pytest.raises(TransFusionError) as info:
            read_rgb(p, 8)
        assert str(p) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(TransFusionError, match="empty"):
        read_rgb(empty, 8)
    with pytest.raises(TransFusionError, match="not found"):
        read_mask(missing, 8)


# ----------------------------------------------------------------------------- masks


def test_visa_style_value_one_mask_becomes_positive(tmp_path: Path) -> None:
    m = defect_mask(64, 0)
    p = tmp_path / "visa.png"
    Image.fromarray(m.astype(np.uint8)).save(p)  # values 0/1, as in VisA's release
    out = read_mask(p, 64)
    assert out.shape == (1, 64, 64) and out.dtype == torch.float32
    assert set(torch.unique(out).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(out[0].numpy().astype(bool), m)


def test_binarisation_happens_before_resize(tmp_path: Path) -> None:
    # One pixel of value 1: resized without binarising it would average away to 0.
    m = np.zeros((64, 64), np.uint8)
    m[10, 10] = 1
    p = tmp_path / "dot.png"
    Image.fromarray(m).save(p)
    out = read_mask(p, 32)
    assert out.sum() >= 1
    assert out[0, 5, 5] == 1.0


def test_mask_threshold_is_any_nonzero_after_bilinear_resize(tmp_path: Path) -> None:
    m = (defect_mask(90, 4) * 255).astype(np.uint8)
    p = tmp_path / "m.png"
    Image.fromarray(m).save(p)
    resized = np.asarray(Image.fromarray(m).resize((32, 32), Image.BILINEAR))
    np.testing.assert_array_equal(read_mask(p, 32)[0].numpy(), (resized > 0.5).astype(np.float32))


def test_sixteen_bit_and_colour_masks(tmp_path: Path) -> None:
    m = defect_mask(48, 5)
    Image.fromarray(m.astype(np.uint16) * 65535).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png", 48)[0].numpy().astype(bool), m)

    colour = np.zeros((48, 48, 3), np.uint8)
    colour[m, 2] = 200  # only the blue channel marks the defect
    Image.fromarray(colour).save(tmp_path / "c.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "c.png", 48)[0].numpy().astype(bool), m)


def test_mask_of_wrong_size_warns_once_and_is_resized(tmp_path: Path) -> None:
    m = np.zeros((40, 50), np.uint8)
    m[10:30, 20:40] = 255
    p = tmp_path / "odd.png"
    Image.fromarray(m).save(p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = read_mask(p, 32, expected_hw=(64, 64))
        b = read_mask(p, 32, expected_hw=(64, 64))
        read_mask(p, 32, expected_hw=(40, 50))  # matching size: no warning
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and str(p) in msgs[0] and "\n" not in msgs[0]
    assert a.shape == (1, 32, 32) and torch.equal(a, b) and a.sum() > 0


def test_sixteen_bit_tiff_mask_with_small_values(tmp_path: Path) -> None:
    import tifffile

    m = defect_mask(32, 6)
    p = tmp_path / "m.tiff"
    tifffile.imwrite(p, m.astype(np.uint16))  # values 0/1 in 16 bit
    np.testing.assert_array_equal(read_mask(p, 32)[0].numpy().astype(bool), m)


# ----------------------------------------------------------------------------- real data


@needs_bottle
def test_real_bottle_image_and_mask() -> None:
    img = BOTTLE / "test" / "broken_large" / "000.png"
    mask = BOTTLE / "ground_truth" / "broken_large" / "000_mask.png"
    t = read_rgb(img, 64)
    assert t.shape == (3, 64, 64)
    # The bottle is dark on a bright background: centre darker than the corners.
    assert float(t[:, 28:36, 28:36].mean()) < float(t[:, :4, :4].mean())
    assert image_hw(img) == (900, 900)
    m = read_mask(mask, 64, expected_hw=image_hw(img))
    full = np.asarray(Image.open(mask)) > 0
    frac = float(m.mean())
    assert 0 < frac < 0.5
    # Downsampled mask covers at least as much as the original (any non-zero counts).
    assert frac >= full.mean()


def test_an_image_over_the_pixel_limit_says_so_and_how_to_raise_it(tmp_path: Path) -> None:
    """A valid 20000 x 20000 image is not damaged: the message names the decoder's limit and the
    flag that raises it (issue 26, item 7), for every reader."""
    p = tmp_path / "huge.png"
    p.write_bytes(png_claiming(20000, 20000))
    for read in (lambda: read_rgb(p, 32), lambda: read_mask(p, 32), lambda: image_hw(p), lambda: read_rgb_uint8(p)):
        with pytest.raises(TransFusionError) as info:
            read()
        msg = str(info.value)
        assert str(p) in msg and "400,000,000 pixels" in msg and "pixel limit of 178,956,970" in msg, msg
        assert "--max-image-pixels 400000000" in msg and "max_image_pixels(400000000)" in msg
        assert "re-copy" not in msg and "\n" not in msg


def test_max_image_pixels_sets_the_limit_inside_and_restores_it(tmp_path: Path) -> None:
    p = tmp_path / "small.png"
    Image.fromarray(np.zeros((48, 40, 3), np.uint8)).save(p)  # 1920 pixels
    before = pixel_limit()
    with max_image_pixels(1919), pytest.raises(TransFusionError, match="1,920 pixels exceed .* limit of 1,919"):
        read_rgb(p, 32)
    with max_image_pixels(1920), warnings.catch_warnings(record=True) as shown:
        assert read_rgb(p, 32).shape == (3, 32, 32)
    assert not shown  # no decompression-bomb warning about what the limit admits
    assert pixel_limit() == before
