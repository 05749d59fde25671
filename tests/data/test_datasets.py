"""data.datasets and data.fg_masks: discovery in every supported layout, torch Datasets,
foreground masks (released and computed)."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data.fg_masks as fgm
from data.catalog import DATASET_CATEGORIES, TEXTURE_CATEGORIES
from data.datasets import TestDataset, TrainDataset
from data.discovery import find_test_samples, find_train_images, resolve_categories, visa_layout
from data.fg_masks import FgMaskSource
from data.io import read_rgb
from tests.fixtures.helpers import SHARED
from tests.fixtures.layouts import (
    defect_mask,
    make_folder,
    make_mvtec,
    make_mvtec3d,
    make_visa_rearranged,
    make_visa_released,
    object_mask,
)
from utils.core.errors import TransFusionError

REAL_MVTEC = SHARED / "data" / "mvtec_ad"
REAL_3D = SHARED / "data" / "mvtec_3d"
needs_bottle = pytest.mark.skipif(not (REAL_MVTEC / "bottle").is_dir(), reason="real MVTec bottle slice absent")
needs_tire = pytest.mark.skipif(not (REAL_3D / "tire").is_dir(), reason="real MVTec 3D-AD tire slice absent")


# ----------------------------------------------------------------------------- categories


def test_category_lists() -> None:
    assert len(DATASET_CATEGORIES["mvtec"]) == 15 and len(DATASET_CATEGORIES["visa"]) == 12
    assert len(DATASET_CATEGORIES["mvtec3d"]) == 10
    assert TEXTURE_CATEGORIES <= set(DATASET_CATEGORIES["mvtec"])
    assert "metal_nut" in DATASET_CATEGORIES["mvtec"] and "pipe_fryum" in DATASET_CATEGORIES["visa"]
    assert "cable_gland" in DATASET_CATEGORIES["mvtec3d"]


def test_resolve_all_requires_every_category(tmp_path: Path) -> None:
    for c in DATASET_CATEGORIES["mvtec3d"]:
        (tmp_path / c).mkdir()
    assert resolve_categories("mvtec3d", tmp_path, "all") == list(DATASET_CATEGORIES["mvtec3d"])
    shutil.rmtree(tmp_path / "rope")
    with pytest.raises(TransFusionError, match="rope") as info:
        resolve_categories("mvtec3d", tmp_path, "all")
    assert str(tmp_path / "rope") in str(info.value)
    with pytest.raises(TransFusionError, match="none of the mvtec categories"):
        resolve_categories("mvtec", tmp_path, "all")


def test_resolve_single_missing_lists_what_is_there(tmp_path: Path) -> None:
    (tmp_path / "bottle").mkdir()
    (tmp_path / "cable").mkdir()
    assert resolve_categories("mvtec", tmp_path, "bottle") == ["bottle"]
    with pytest.raises(TransFusionError) as info:
        resolve_categories("mvtec", tmp_path, "screw")
    msg = str(info.value)
    assert str(tmp_path / "screw") in msg and "bottle, cable" in msg
    with pytest.raises(TransFusionError, match="does not exist"):
        resolve_categories("mvtec", tmp_path / "nowhere", "bottle")
    with pytest.raises(TransFusionError, match="unknown dataset"):
        resolve_categories("kitti", tmp_path, "bottle")


def test_resolve_folder_dataset(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "widgets", n_train=2)
    assert resolve_categories("folder", folder, "all") == ["widgets"]
    make_folder(folder, "left", n_train=2)
    assert resolve_categories("folder", folder, "left") == ["left"]
    with pytest.warns(UserWarning, match="no sub-folder 'typo'"):
        assert resolve_categories("folder", folder, "typo") == ["widgets"]


# ----------------------------------------------------------------------------- MVTec AD


def test_mvtec_discovery(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path, defects=("crack", "bent"), n_train=3)
    (root / "bottle" / "train" / "good" / "._000.png").write_bytes(b"junk")  # macOS resource fork
    (root / "bottle" / "train" / "good" / "notes.txt").write_text("x")
    train = find_train_images("mvtec", root, "bottle")
    assert [p.name for p in train] == ["000.png", "001.png", "002.png"]
    tests = find_test_samples("mvtec", root, "bottle")
    assert [(s.defect, s.image_path.name, s.label) for s in tests] == [
        ("bent", "000.png", 1), ("bent", "001.png", 1), ("crack", "000.png", 1), ("crack", "001.png", 1),
        ("good", "000.png", 0), ("good", "001.png", 0),
    ]
    assert tests[0].mask_path == root / "bottle" / "ground_truth" / "bent" / "000_mask.png"
    assert all(s.mask_path is None for s in tests if s.label == 0)


def test_mvtec_missing_mask_and_empty_train(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path)
    gone = root / "bottle" / "ground_truth" / "crack" / "001_mask.png"
    gone.unlink()
    with pytest.raises(TransFusionError) as info:
        find_test_samples("mvtec", root, "bottle")
    assert str(root / "bottle" / "test" / "crack" / "001.png") in str(info.value) and str(gone) in str(info.value)
    for p in (root / "bottle" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(TransFusionError, match="no training images") as info:
        find_train_images("mvtec", root, "bottle")
    assert str(root / "bottle" / "train" / "good") in str(info.value)


def test_mvtec_torch_datasets(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path, n_train=2)
    train = TrainDataset("mvtec", root, "bottle", "rgb", 32)
    item = train[1]
    assert item["image"].shape == (3, 32, 32) and item["index"] == 1
    assert torch.equal(item["fg"], torch.ones(1, 32, 32))
    test = TestDataset("mvtec", root, "bottle", "rgb", 32)
    bad, good = test[0], test[len(test) - 1]
    assert bad["label"] == 1 and bad["defect"] == "crack" and bad["mask"].sum() > 0
    assert good["label"] == 0 and good["mask"].sum() == 0 and good["mask"].shape == (1, 32, 32)
    assert Path(good["path"]) == root / "bottle" / "test" / "good" / "001.png"
    with pytest.raises(TransFusionError, match="only the mvtec3d"):
        TrainDataset("mvtec", root, "bottle", "rgbd", 32)
    with pytest.raises(TransFusionError, match="unknown mode"):
        TestDataset("mvtec", root, "bottle", "depth", 32)


@needs_bottle
def test_real_bottle_discovery_and_masks() -> None:
    train = find_train_images("mvtec", REAL_MVTEC, "bottle")
    assert len(train) == 12 and train == sorted(train)
    tests = find_test_samples("mvtec", REAL_MVTEC, "bottle")
    assert len(tests) == 12 and sum(s.label for s in tests) == 9
    assert {s.defect for s in tests} == {"broken_large", "broken_small", "contamination", "good"}
    ds = TestDataset("mvtec", REAL_MVTEC, "bottle", "rgb", 32)
    for i in (0, 3, 6):  # first of each anomalous defect type
        item = ds[i]
        assert item["label"] == 1 and 0 < float(item["mask"].mean()) < 0.5


# ----------------------------------------------------------------------------- VisA


def test_visa_released_discovery_and_value_one_masks(tmp_path: Path) -> None:
    root = make_visa_released(tmp_path, n_train=3, n_test_good=1, n_anomaly=2)
    make_visa_released(tmp_path, category="pcb1", n_train=2, n_test_good=1, n_anomaly=1)
    assert visa_layout(root, "candle") == "released"
    train = find_train_images("visa", root, "candle")
    assert [p.name for p in train] == ["0000.JPG", "0001.JPG", "0002.JPG"]
    tests = find_test_samples("visa", root, "candle")
    assert [(s.defect, s.label) for s in tests] == [("bad", 1), ("bad", 1), ("good", 0)]
    assert tests[0].mask_path == root / "candle" / "Data" / "Masks" / "Anomaly" / "000.png"
    assert len(find_train_images("visa", root, "pcb1")) == 2
    # Masks hold the value 1; they must come out as anomalous pixels, matching the drawn defect.
    item = TestDataset("visa", root, "candle", "rgb", 64)[0]
    np.testing.assert_array_equal(item["mask"][0].numpy().astype(bool), defect_mask(64, 300))


def _rewrite_csv(path: Path, edit) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows = edit(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda rows: [[c for i, c in enumerate(r) if i != 1] for r in rows], "split"),  # column dropped
        (lambda rows: [rows[0]] + [[r[0], "val" if i == 0 else r[1]] + r[2:] for i, r in enumerate(rows[1:])], "val"),
        (lambda rows: [rows[0]] + [[r[0], r[1], "weird"] + r[3:] for r in rows[1:]], "weird"),
        (lambda rows: [rows[0]] + [[r[0], r[1], r[2], r[3].replace("0000", "9999")] + r[4:] for r in rows[1:]], "9999"),
    ],
    ids=["missing-column", "unknown-split", "unknown-label", "missing-file"],
)
def test_visa_malformed_csv_errors_name_the_csv(tmp_path: Path, edit, expected: str) -> None:
    root = make_visa_released(tmp_path, n_train=2, n_test_good=1, n_anomaly=1)
    csv_path = root / "split_csv" / "1cls.csv"
    _rewrite_csv(csv_path, edit)
    with pytest.raises(TransFusionError, match=expected) as info:
        find_train_images("visa", root, "candle")
    assert str(csv_path) in str(info.value) and "\n" not in str(info.value)


def test_visa_anomaly_without_mask_in_csv(tmp_path: Path) -> None:
    root = make_visa_released(tmp_path, n_train=2, n_test_good=1, n_anomaly=1)
    _rewrite_csv(root / "split_csv" / "1cls.csv", lambda rows: [r[:4] + [""] if r[2] == "anomaly" else r for r in rows])
    with pytest.raises(TransFusionError, match="no mask path"):
        find_test_samples("visa", root, "candle")


def test_visa_rearranged_detected_and_read(tmp_path: Path) -> None:
    root = make_visa_rearranged(tmp_path, n_train=2, n_test_good=1, n_anomaly=2)
    # mixed-case extensions must be accepted
    good = root / "candle" / "train" / "good"
    (good / "0001.JPG").rename(good / "0001.jpg")
    assert visa_layout(root, "candle") == "rearranged"
    assert [p.name for p in find_train_images("visa", root, "candle")] == ["0000.JPG", "0001.jpg"]
    tests = find_test_samples("visa", root, "candle")
    assert [(s.defect, s.image_path.name, s.label) for s in tests] == [
        ("bad", "000.JPG", 1), ("bad", "001.JPG", 1), ("good", "0002.JPG", 0)
    ]
    assert tests[1].mask_path == root / "candle" / "ground_truth" / "bad" / "001.png"
    (root / "candle" / "ground_truth" / "bad" / "001.png").unlink()
    with pytest.raises(TransFusionError, match="001.JPG"):
        find_test_samples("visa", root, "candle")


def test_visa_data_folder_without_csv_explains(tmp_path: Path) -> None:
    root = make_visa_released(tmp_path, n_train=1, n_test_good=1, n_anomaly=1)
    (root / "split_csv" / "1cls.csv").unlink()
    with pytest.raises(TransFusionError, match="1cls.csv"):
        find_train_images("visa", root, "candle")


# ----------------------------------------------------------------------------- MVTec 3D-AD


def test_mvtec3d_discovery(tmp_path: Path) -> None:
    root = make_mvtec3d(tmp_path, n_train=2, defects=("hole", "cut"), n_per_defect=1)
    assert [p.name for p in find_train_images("mvtec3d", root, "tire")] == ["000.png", "001.png"]
    tests = find_test_samples("mvtec3d", root, "tire")
    assert [(s.defect, s.label) for s in tests] == [("cut", 1), ("good", 0), ("hole", 1)]
    for s in tests:
        assert s.mask_path == s.image_path.parent.parent / "gt" / s.image_path.name  # good has gt too
        assert s.xyz_path == s.image_path.parent.parent / "xyz" / (s.image_path.stem + ".tiff")


def test_mvtec3d_rgbd_train_and_test(tmp_path: Path) -> None:
    root = make_mvtec3d(tmp_path, n_train=2, n_test_good=1, defects=("hole",), n_per_defect=2, size=32)
    train = TrainDataset("mvtec3d", root, "tire", "rgbd", 32)
    assert train.depth_norm == pytest.approx((0.0, 1.1))  # z < 1 everywhere, as on MVTec 3D-AD
    item = train[0]
    assert item["image"].shape == (4, 32, 32) and item["fg"].shape == (1, 32, 32)
    depth = item["image"][3]
    fg = item["fg"][0].bool()
    # docs/method.md §1: the table stays in the input, (z - 1.1) / 1.1 with z about 0.6 (not blanked to 0)
    assert -0.5 < depth[0, 0] < -0.4 and -0.5 < depth[-1, -1] < -0.4
    # fg is the object (plane mask x measured depth): it only places anomalies; the object, closer
    # to the camera than the table, reads lower.
    obj = torch.from_numpy(object_mask(32, 0))
    assert (fg & ~obj).sum() == 0 and fg.sum() >= obj.sum() - 6
    assert depth[fg].max() < depth[~obj].min()
    assert torch.equal(item["image"][:3], read_rgb(train.paths[0], 32))  # rgb first, then depth
    d_only = TrainDataset("mvtec3d", root, "tire", "d", 32, depth_norm=train.depth_norm)
    assert torch.equal(d_only[0]["image"], item["image"][3:])

    with pytest.raises(TransFusionError, match="depth range"):
        TestDataset("mvtec3d", root, "tire", "rgbd", 32)
    test = TestDataset("mvtec3d", root, "tire", "rgbd", 32, depth_norm=train.depth_norm)
    labels = [test[i]["label"] for i in range(len(test))]
    assert labels == [0, 1, 1]
    assert test[0]["mask"].sum() == 0
    # Both the 8-bit (0/255) and the 16-bit (0/65535) gt mask reproduce the drawn defect.
    for i, seed in ((1, 200), (2, 201)):
        np.testing.assert_array_equal(test[i]["mask"][0].numpy().astype(bool), defect_mask(32, seed))


def test_mvtec3d_depth_without_xyz_errors(tmp_path: Path) -> None:
    root = make_mvtec3d(tmp_path, n_train=2, n_per_defect=1, with_xyz=False, size=32)
    with pytest.raises(TransFusionError, match="xyz") as info:
        TrainDataset("mvtec3d", root, "tire", "d", 32)
    assert str(root / "tire" / "train" / "good" / "xyz" / "000.tiff") in str(info.value)
    rgb = TestDataset("mvtec3d", root, "tire", "rgb", 32)  # rgb mode needs no xyz
    assert rgb[0]["image"].shape == (3, 32, 32)


@needs_tire
def test_real_tire_rgb_mode_without_xyz() -> None:
    train = TrainDataset("mvtec3d", REAL_3D, "tire", "rgb", 32)
    assert len(train) == 5
    test = TestDataset("mvtec3d", REAL_3D, "tire", "rgb", 32)
    assert len(test) == 10 and all(s.xyz_path is None for s in test.samples)
    items = {test.samples[i].defect: test[i] for i in range(0, len(test), 2)}
    assert items["good"]["label"] == 0 and items["good"]["mask"].sum() == 0
    assert items["hole"]["label"] == 1 and items["hole"]["mask"].sum() > 0  # gt values are 253, not 255
    with pytest.raises(TransFusionError, match="point cloud"):
        TestDataset("mvtec3d", REAL_3D, "tire", "rgbd", 32, depth_norm=(0.0, 1.1))


# ----------------------------------------------------------------------------- folder


def test_folder_plain_and_nested(tmp_path: Path) -> None:
    plain = make_folder(tmp_path, "plain", n_train=3)
    assert len(find_train_images("folder", plain, "plain")) == 3
    assert find_test_samples("folder", plain, "plain") == []
    nested = make_folder(tmp_path, "nested", n_train=2, nested=True, with_test=True, mask_suffix="")
    assert len(find_train_images("folder", nested, "all")) == 2
    tests = find_test_samples("folder", nested, "all")
    assert [(s.defect, s.label) for s in tests] == [("good", 0), ("scratch", 1)]
    assert tests[1].mask_path is not None and tests[1].mask_path.name == "000.png"
    # The root can also be the parent, with the category naming the sub-folder.
    assert len(find_train_images("folder", tmp_path, "plain")) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TransFusionError, match="no training images"):
        find_train_images("folder", empty, "all")


# ----------------------------------------------------------------------------- foreground masks


def test_fg_none_for_textures_or_when_disabled(tmp_path: Path) -> None:
    paths = [tmp_path / "a.png"]
    assert FgMaskSource.for_category("mvtec", "carpet", paths, 32, None, True, None) is None
    assert FgMaskSource.for_category("mvtec", "bottle", paths, 32, None, False, None) is None


@pytest.mark.parametrize("released_layout", [False, True])
def test_released_fg_masks_threshold_dilate_and_align(tmp_path: Path, released_layout: bool) -> None:
    root = make_mvtec(tmp_path / "data", n_train=3)
    train = find_train_images("mvtec", root, "bottle")
    base = tmp_path / "fg" / ("mvtec_masks" if released_layout else "")
    folder = base / "bottle" / "train" / "good"
    folder.mkdir(parents=True)
    for i in range(3):
        m = np.zeros((32, 32), np.uint8)
        m[10 + i, 10:20] = 255  # one row per image: position i must give this row
        m[25, 25] = 100  # below the 0.5 threshold: must vanish
        Image.fromarray(m).save(folder / f"{i:03d}.png")
    src = FgMaskSource.for_category("mvtec", "bottle", train, 32, str(tmp_path / "fg"), True, None)
    assert src is not None and len(src) == 3
    for i in range(3):
        got = src[i]
        assert got.shape == (1, 32, 32) and got.dtype == torch.float32
        expected = np.zeros((32, 32), bool)
        expected[10 + i - 2 : 10 + i + 3, 8:22] = True  # the line dilated by a 5x5 kernel
        np.testing.assert_array_equal(got[0].numpy().astype(bool), expected)
    ds = TrainDataset("mvtec", root, "bottle", "rgb", 32, fg_masks=src)
    assert torch.equal(ds[2]["fg"], src[2])


def test_released_fg_masks_count_mismatch_and_missing(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "data", n_train=3)
    train = find_train_images("mvtec", root, "bottle")
    folder = tmp_path / "fg" / "mvtec_masks" / "bottle" / "train" / "good"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(folder / "000.png")
    with pytest.raises(TransFusionError, match="has no foreground mask") as info:
        FgMaskSource.for_category("mvtec", "bottle", train, 32, str(tmp_path / "fg"), True, None)
    assert str(train[1]) in str(info.value) and str(folder) in str(info.value)  # the first image without one
    with pytest.raises(TransFusionError, match="no foreground masks for 'cable'"):
        FgMaskSource.for_category("mvtec", "cable", train, 32, str(tmp_path / "fg"), True, None)
    # More masks than images: paired by position as the released code does, with a warning.
    for i in (1, 2, 3):
        Image.fromarray(np.full((8, 8), 255, np.uint8)).save(folder / f"{i:03d}.png")
    with pytest.warns(UserWarning, match="4 foreground masks for 3 training images"):
        src = FgMaskSource.for_category("mvtec", "bottle", train, 32, str(tmp_path / "fg"), True, None)
    assert len(src) == 3


def test_released_fg_masks_take_jpg_only_without_png(tmp_path: Path) -> None:
    """docs/method.md §2: every *.png, or every *.JPG when there is none, sorted."""
    root = make_mvtec(tmp_path / "data", n_train=2)
    train = find_train_images("mvtec", root, "bottle")
    folder = tmp_path / "fg" / "mvtec_masks" / "bottle" / "train" / "good"
    folder.mkdir(parents=True)
    for i in range(2):
        m = np.zeros((32, 32), np.uint8)
        m[:, : 8 * (i + 1)] = 255  # image i covers the left 8(i+1) columns
        Image.fromarray(m).save(folder / f"{i:03d}.JPG", quality=100)
    src = FgMaskSource.for_category("mvtec", "bottle", train, 32, str(tmp_path / "fg"), True, None)
    assert src.source == f"released:{folder}"
    for i in range(2):  # dilated by 5x5: two more columns
        np.testing.assert_array_equal(src[i][0].numpy().sum(axis=0) > 0, np.arange(32) < 8 * (i + 1) + 2)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "zzz.png")  # a png hides the JPGs
    with pytest.raises(TransFusionError, match="has no foreground mask"):
        FgMaskSource.for_category("mvtec", "bottle", train, 32, str(tmp_path / "fg"), True, None)


def test_released_fg_masks_resize_like_opencv_linear(tmp_path: Path) -> None:
    """docs/method.md §2: OpenCV's linear resize (no antialiasing), grey, / 255 > 0.5, 5x5 dilation."""
    import cv2

    root = make_mvtec(tmp_path / "data", n_train=1)
    train = find_train_images("mvtec", root, "bottle")
    folder = tmp_path / "fg" / "mvtec_masks" / "bottle" / "train" / "good"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    m = (rng.random((100, 100)) > 0.7).astype(np.uint8) * 255  # fine speckle: antialiasing would blur it away
    Image.fromarray(m).save(folder / "000.png")
    src = FgMaskSource.for_category("mvtec", "bottle", train, 32, str(tmp_path / "fg"), True, None)
    small = cv2.resize(np.repeat(m[..., None], 3, axis=2), (32, 32), interpolation=cv2.INTER_LINEAR)[..., 0]
    expected = cv2.dilate((small / 255.0 > 0.5).astype(np.uint8), np.ones((5, 5), np.uint8))
    np.testing.assert_array_equal(src[0][0].numpy(), expected.astype(np.float32))


def test_default_fg_mask_folder_without_the_category_falls_back_to_computed(tmp_path: Path) -> None:
    """The default ./fg_masks/ is not required: without this category's masks they are computed,
    and the note says so; an explicit --fg-mask-path without them is an error."""
    root = make_mvtec(tmp_path / "data", n_train=2, size=48)
    train = find_train_images("mvtec", root, "bottle")
    (tmp_path / "fg").mkdir()
    src = FgMaskSource.for_category("mvtec", "bottle", train, 32, str(tmp_path / "fg"), True,
                                    tmp_path / "cache", required=False)
    assert src.source == f"computed:{tmp_path / 'cache'}"
    assert "no released foreground masks in" in src.note and "preview.png" in src.note
    assert src.record()["kind"] == "computed"


def test_computed_fg_masks_cover_synthetic_object_and_cache(tmp_path: Path, monkeypatch) -> None:
    root = make_mvtec(tmp_path / "data", n_train=3, size=64)
    train = find_train_images("mvtec", root, "bottle")
    cache = tmp_path / "cache"
    src = FgMaskSource.for_category("mvtec", "bottle", train, 64, None, True, cache)
    assert src is not None and src.n_fallback == 0
    for i in range(3):
        m = src[i][0].numpy().astype(bool)
        obj = object_mask(64, i)
        assert m[obj].mean() > 0.98  # the object is covered...
        # ...and most of the background is not (the 5x5 dilation alone adds a 2 px rim at 64 px)
        assert m[~obj].mean() < 0.25
        assert not m[:4].any() and not m[-4:].any() and not m[:, :4].any() and not m[:, -4:].any()
    assert (cache / "preview.png").is_file() and Image.open(cache / "preview.png").width > 64
    assert len(list(cache.glob("0*.png"))) == 3

    # Second call: served from the cache, no recomputation.
    def boom(*args, **kwargs):
        raise AssertionError("recomputed despite a valid cache")

    monkeypatch.setattr(fgm, "compute_fg_mask", boom)
    again = FgMaskSource.for_category("mvtec", "bottle", train, 64, None, True, cache)
    assert again is not None and np.array_equal(again.masks, src.masks)
    # Different training images (same count): the cache must not be reused.
    with pytest.raises(AssertionError, match="recomputed"):
        FgMaskSource.for_category("mvtec", "bottle", train[:2] + [train[0]], 64, None, True, cache)


def test_computed_fg_falls_back_to_all_ones_on_uniform_images(tmp_path: Path) -> None:
    folder = tmp_path / "flat"
    folder.mkdir()
    Image.fromarray(np.full((48, 48, 3), 128, np.uint8)).save(folder / "a.png")
    with pytest.warns(UserWarning, match="implausible"):
        src = FgMaskSource.for_category("folder", "flat", [folder / "a.png"], 32, None, True, None)
    assert src is not None and torch.equal(src[0], torch.ones(1, 32, 32)) and src.n_fallback == 1


def test_computed_fg_uses_depth_plane_for_mvtec3d(tmp_path: Path) -> None:
    root = make_mvtec3d(tmp_path, n_train=2, size=32)
    train = find_train_images("mvtec3d", root, "tire")
    src = FgMaskSource.for_category("mvtec3d", "tire", train, 32, None, True, None)
    assert src is not None and src.source.startswith("computed")
    obj = object_mask(32, 0)
    m = src[0][0].numpy().astype(bool)
    assert m[obj].all() and not m[0, 0] and not m[-1, -1]


@needs_bottle
def test_computed_fg_masks_on_real_bottle(tmp_path: Path) -> None:
    train = find_train_images("mvtec", REAL_MVTEC, "bottle")[:4]
    src = FgMaskSource.for_category("mvtec", "bottle", train, 64, None, True, tmp_path / "cache")
    assert src is not None and src.n_fallback == 0
    for i in range(len(src)):
        m = src[i][0]
        assert m[32, 32] == 1 and m[20:44, 20:44].all()  # the bottle (dark opening included)
        assert m[0, 0] == 0 and m[0, -1] == 0 and m[-1, 0] == 0 and m[-1, -1] == 0  # corners: background
        assert 0.5 < float(m.mean()) < 0.9
    assert (tmp_path / "cache" / "preview.png").is_file()
