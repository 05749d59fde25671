"""data.depth: MVTec 3D-AD xyz reading and the docs/method.md §1 depth preprocessing."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from data.depth import depth_range, fill_holes, normalise_depth, preprocess_depth, read_xyz
from tests.fixtures.layouts import OBJECT_Z_OFFSET, object_mask, xyz_scene
from utils.core.errors import TransFusionError


def _plane_xyz(size: int, box: tuple[slice, slice] | None = None, raise_by: float = 0.02) -> np.ndarray:
    """A tilted table plane with an optional raised box, no missing points."""
    rr, cc = np.mgrid[0:size, 0:size].astype(np.float64)
    z = 0.5 + 0.003 * cc - 0.002 * rr  # steep enough that z alone would not separate the box
    if box is not None:
        z[box] -= raise_by
    return np.stack([(cc - size / 2) * 0.001, (rr - size / 2) * 0.001, z], axis=2).astype(np.float32)


# ----------------------------------------------------------------------------- read_xyz


def _write_tiff(path: Path, arr: np.ndarray) -> None:
    # Explicit photometric/planarconfig: samples stay interleaved (HxWxC), as in MVTec 3D-AD.
    tifffile.imwrite(path, arr, photometric="minisblack", planarconfig="contig" if arr.ndim == 3 else None)


def test_read_xyz_roundtrip(tmp_path: Path) -> None:
    xyz = xyz_scene(32, 0)
    _write_tiff(tmp_path / "a.tiff", xyz)
    got = read_xyz(tmp_path / "a.tiff")
    assert got.dtype == np.float32 and got.shape == (32, 32, 3)
    np.testing.assert_array_equal(got, xyz)


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 4), (3, 16, 16)])
def test_read_xyz_wrong_shape_raises(tmp_path: Path, shape: tuple[int, ...]) -> None:
    p = tmp_path / "bad.tiff"
    _write_tiff(p, np.ones(shape, np.float32))
    with pytest.raises(TransFusionError, match="HxWx3") as info:
        read_xyz(p)
    assert str(p) in str(info.value)


def test_read_xyz_unreadable_or_missing_raises(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tiff"
    junk.write_text("definitely not a tiff")
    for p in (junk, tmp_path / "missing.tiff"):
        with pytest.raises(TransFusionError) as info:
            read_xyz(p)
        assert str(p) in str(info.value) and "\n" not in str(info.value)


def test_read_xyz_nan_points_become_missing_with_warning(tmp_path: Path) -> None:
    xyz = xyz_scene(16, 1, n_missing=0)
    xyz[3, 4, 2] = np.nan
    xyz[5, 6, 0] = np.inf
    p = tmp_path / "nan.tiff"
    _write_tiff(p, xyz)
    with pytest.warns(UserWarning) as rec:
        got = read_xyz(p)
    assert len(rec) == 1 and str(p) in str(rec[0].message) and " 2 point" in str(rec[0].message)
    assert np.all(got[3, 4] == 0) and np.all(got[5, 6] == 0)
    assert np.isfinite(got).all()


# ----------------------------------------------------------------------------- preprocessing


def test_plane_mask_marks_the_object_and_the_depth_keeps_the_table() -> None:
    box = (slice(10, 22), slice(12, 26))
    xyz = _plane_xyz(32, box)
    depth, plane = preprocess_depth(xyz, 32)
    expected = np.zeros((32, 32), np.float32)
    expected[box] = 1.0
    np.testing.assert_array_equal(plane, expected)
    # docs/method.md §1: the plane mask never touches the input; the depth is the whole measured z.
    np.testing.assert_array_equal(depth, xyz[..., 2])


def test_points_closer_than_threshold_to_plane_are_background() -> None:
    box = (slice(8, 20), slice(8, 20))
    _, plane = preprocess_depth(_plane_xyz(28, box, raise_by=0.004), 28)
    assert plane.sum() == 0  # 4 mm < 5 mm: still part of the table


def test_plane_fit_ignores_missing_points_in_corner_patch() -> None:
    xyz = xyz_scene(48, 3)  # has a (0,0,0) point inside the top-left corner patch
    assert np.all(xyz[1, 1] == 0)
    _, plane = preprocess_depth(xyz, 48)
    measured = xyz[..., 2] != 0  # a missing point on the object's rim may stay outside the mask
    np.testing.assert_array_equal(plane.astype(bool)[measured], object_mask(48, 3)[measured])
    assert plane.sum() >= object_mask(48, 3).sum() - 6


def test_missing_points_inside_object_are_closed_and_filled() -> None:
    box = (slice(6, 26), slice(6, 26))
    xyz = _plane_xyz(32, box)
    xyz[15, 15] = 0.0  # single missing point
    xyz[9:12, 19:22] = 0.0  # 3x3 missing patch
    depth, plane = preprocess_depth(xyz, 32)
    assert plane[15, 15] == 1.0 and plane[10, 20] == 1.0  # closing bridges the holes
    z = xyz[..., 2].astype(np.float64)
    np.testing.assert_allclose(depth[15, 15], (z[14:17, 14:17].sum() - z[15, 15]) / 8, rtol=1e-6)
    assert depth[10, 20] != 0  # centre of the 3x3 hole: filled on the second pass
    assert np.all(depth[box] != 0)


def test_fill_holes_two_passes_spread_two_pixels() -> None:
    d = np.zeros((9, 9), np.float32)
    d[4, 4] = 2.0
    once = fill_holes(d, passes=1)
    assert np.count_nonzero(once) == 9 and np.all(once[3:6, 3:6] == 2.0)
    twice = fill_holes(d)
    assert np.count_nonzero(twice) == 25 and twice[0, 0] == 0
    # Simultaneous update: a pixel takes the mean of its non-zero neighbours of the previous pass.
    d2 = np.array([[1, 0, 3]], np.float32)
    np.testing.assert_allclose(fill_holes(d2, passes=1), [[1, 2, 3]])


def test_nearest_resize_picks_source_points() -> None:
    xyz = _plane_xyz(64)
    xyz[..., 2] += np.arange(64 * 64).reshape(64, 64) * 1e-7  # make every z unique
    depth, _ = preprocess_depth(xyz, 32)  # nothing is foreground, which does not matter to the depth
    from data.depth import _resize_nearest

    small = _resize_nearest(xyz, 32)
    np.testing.assert_array_equal(small, xyz[::2, ::2])
    np.testing.assert_array_equal(_resize_nearest(xyz, 64), xyz)
    np.testing.assert_array_equal(depth, xyz[::2, ::2, 2])


def test_unfittable_plane_warns_and_keeps_measured_points() -> None:
    xyz = _plane_xyz(16, (slice(5, 10), slice(5, 10)))
    xyz[:3, :3] = 0.0  # no valid point in the top-left corner patch
    with pytest.warns(UserWarning, match="tile-7"):
        _, plane = preprocess_depth(xyz, 16, name="tile-7")
    assert plane.min() == 1.0  # the table is kept too (closing even bridges the empty corner)


def test_xyz_scene_object_is_foreground() -> None:
    xyz = xyz_scene(40, 7)
    depth, plane = preprocess_depth(xyz, 40)
    obj = object_mask(40, 7)
    valid = xyz[..., 2] != 0
    np.testing.assert_array_equal(plane.astype(bool)[valid], obj[valid])
    # Object depth is raw z (table minus the offset) wherever measured.
    measured = obj & valid
    assert np.all(depth[measured] == xyz[..., 2][measured])
    assert OBJECT_Z_OFFSET > 0.005


# ----------------------------------------------------------------------------- normalisation


def test_depth_range_rules() -> None:
    a = np.array([[0.0, 0.6], [0.7, 0.0]], np.float32)
    assert depth_range([a]) == pytest.approx((0.0, 1.1))  # running min starts at 0, max at 1
    b = np.array([[0.0, 2.0]], np.float32)
    assert depth_range([a, b]) == pytest.approx((0.0, 2.2))
    c = np.array([[-0.5, 0.0, 0.3]], np.float32)
    assert depth_range([c]) == pytest.approx((-0.45, 1.1))
    assert depth_range(iter([a])) == pytest.approx((0.0, 1.1))  # any iterable, e.g. a generator


def test_normalise_depth_preserves_zero_and_follows_formula() -> None:
    d = np.array([[0.0, 0.55], [1.1, 0.0]], np.float32)
    out = normalise_depth(d, 0.0, 1.1)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 2) and out.dtype == torch.float32
    assert out[0, 0, 0] == 0.0 and out[0, 1, 1] == 0.0
    assert out[0, 0, 1] == pytest.approx((0.55 - 1.1) / 1.1)
    assert out[0, 1, 0] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(TransFusionError, match="gmin"):
        normalise_depth(d, 1.0, 1.0)


def test_no_warnings_on_clean_scene() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preprocess_depth(xyz_scene(32, 0), 32)


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float32, (7, 9), elements=st.sampled_from([0.0, 0.0, 0.0, 0.3, 0.7, 1.5])),
    st.integers(min_value=0, max_value=3),
)
def test_fill_holes_properties(d: np.ndarray, passes: int) -> None:
    out = fill_holes(d, passes=passes)
    nz = d != 0
    np.testing.assert_array_equal(out[nz], d[nz])  # measured values are never changed
    assert np.count_nonzero(out) >= np.count_nonzero(d)
    if nz.any():  # filled values are means of neighbours, so they stay within the data's range
        assert out[out != 0].min() >= d[nz].min() - 1e-6 and out.max() <= d[nz].max() + 1e-6
    norm = normalise_depth(out, 0.0, 1.65)[0].numpy()
    np.testing.assert_array_equal(norm == 0, out == 0)  # normalisation keeps exactly the zeros


# ----------------------------------------------------------------------------- the depth channel, by hand


def _fill_by_hand(z: np.ndarray) -> np.ndarray:
    """docs/method.md §1 hole filling written as loops: each zero pixel takes the mean of the non-zero
    values of its 3x3 neighbourhood; all pixels of a pass read the previous pass."""
    out = z.astype(np.float64)
    h, w = out.shape
    for _ in range(2):
        prev = out.copy()
        for r in range(h):
            for c in range(w):
                if prev[r, c] != 0:
                    continue
                vals = [prev[rr, cc] for rr in range(max(0, r - 1), min(h, r + 2))
                        for cc in range(max(0, c - 1), min(w, c + 2)) if prev[rr, cc] != 0]
                if vals:
                    out[r, c] = sum(vals) / len(vals)
    return out


def _depth_scene(full: int, seed: int) -> np.ndarray:
    """A full-size xyz scene: tilted table, a raised object, a single missing point, a 3x3 hole
    on the table and a 12x12 hole (too large for two passes at half size) in the object."""
    xyz = xyz_scene(full, seed, n_missing=1)
    xyz[6:9, full - 12:full - 9] = 0.0
    xyz[full // 2 - 6:full // 2 + 6, full // 2 - 6:full // 2 + 6] = 0.0
    return xyz


def test_depth_channel_of_mvtec3d_equals_spec_by_hand(tmp_path: Path) -> None:
    """docs/method.md §1: nearest resize, depth = the whole z (table included), two filling passes,
    (z - gmax) / (gmax - gmin) with gmin/gmax from the raw full-size training tiffs, and
    pixels still empty after filling stay 0. Train and test sets alike."""
    from data.datasets import TestDataset, TrainDataset
    from tests.fixtures.layouts import make_mvtec3d

    full, size = 64, 32
    root = make_mvtec3d(tmp_path, n_train=2, n_test_good=1, defects=("hole",), n_per_defect=1, size=full)
    cat = root / "tire"
    scenes = {cat / "train/good/xyz/000.tiff": _depth_scene(full, 0),
              cat / "train/good/xyz/001.tiff": _depth_scene(full, 1),
              cat / "test/good/xyz/000.tiff": _depth_scene(full, 5),
              cat / "test/hole/xyz/000.tiff": _depth_scene(full, 6)}
    # Extremes on pixels that the 2x nearest resize drops: gmin/gmax must see the raw files.
    scenes[cat / "train/good/xyz/000.tiff"][21, 33, 2] = 1.5
    scenes[cat / "train/good/xyz/001.tiff"][41, 13, 2] = -0.2
    for path, xyz in scenes.items():
        _write_tiff(path, xyz)
    gmin, gmax = 0.9 * -0.2, 1.1 * 1.5

    def by_hand(xyz: np.ndarray) -> np.ndarray:
        small_z = xyz[::2, ::2, 2]  # nearest: source index floor(dst * 64 / 32)
        filled = _fill_by_hand(small_z)
        return np.where(filled != 0, (filled - gmax) / (gmax - gmin), 0.0)

    train = TrainDataset("mvtec3d", root, "tire", "d", size)
    assert train.depth_norm == pytest.approx((gmin, gmax))
    for i, name in enumerate(("000", "001")):
        expected = by_hand(scenes[cat / f"train/good/xyz/{name}.tiff"])
        np.testing.assert_allclose(train[i]["image"][0].numpy(), expected, atol=1e-5, rtol=0)
    test = TestDataset("mvtec3d", root, "tire", "rgbd", size, depth_norm=train.depth_norm)
    for item in test:
        defect = "good" if item["label"] == 0 else "hole"
        expected = by_hand(scenes[cat / f"test/{defect}/xyz/000.tiff"])
        np.testing.assert_allclose(item["image"][3].numpy(), expected, atol=1e-5, rtol=0)
    # The table is in the input, not blanked: about (0.6 - 2.0) / 2.2 here, -0.35..-0.5 on MVTec 3D-AD.
    corner = train[0]["image"][0, -4:, :4].numpy()
    table_z = scenes[cat / "train/good/xyz/000.tiff"][::2, ::2, 2][-4:, :4]
    np.testing.assert_allclose(corner, (table_z - gmax) / (gmax - gmin), atol=1e-6)
    assert (corner < -0.5).all()
    # The hole is 6x6 at half size: two passes fill two rings, its 2x2 core stays exactly 0.
    assert (train[0]["image"][0, 15:17, 15:17] == 0).all()


def test_depth_range_uses_released_start_values_on_mvtec_like_scenes(tmp_path: Path) -> None:
    """All z in (0, 1): gmin = 0.9 * min(0, .) = 0 and gmax = 1.1 * max(1, .) = 1.1 (docs/method.md §1)."""
    from data.datasets import TrainDataset
    from tests.fixtures.layouts import make_mvtec3d

    root = make_mvtec3d(tmp_path, n_train=2, size=32)
    assert TrainDataset("mvtec3d", root, "tire", "d", 32).depth_norm == pytest.approx((0.0, 1.1))
