"""Tests for the built-in demo dataset (data/demo_dataset.py): MVTec layout, masks, determinism, caching."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.demo_dataset import DEFECT_TYPES, DEMO_CATEGORIES, build_demo_dataset, iter_category_samples, write_preview
from utils.core.errors import TransFusionError

# Tiny but complete: every category and defect type, at the demo's training resolution.
PARAMS = dict(image_size=64, n_train=3, n_test_good=2, n_test_per_defect=2, seed=0)


def _build(root: Path, **overrides) -> Path:
    return build_demo_dataset(root, **{**PARAMS, **overrides})


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("demo"))


def _subdirs(p: Path) -> set[str]:
    return {c.name for c in p.iterdir() if c.is_dir()}


def test_mvtec_layout_exact(demo_root: Path) -> None:
    assert _subdirs(demo_root) == set(DEMO_CATEGORIES)
    assert {p.name for p in demo_root.iterdir() if p.is_file()} == {"manifest.json"}
    for cat in DEMO_CATEGORIES:
        base = demo_root / cat
        assert _subdirs(base) == {"train", "test", "ground_truth"}
        assert _subdirs(base / "train") == {"good"}
        assert _subdirs(base / "test") == {"good", *DEFECT_TYPES}
        # Good images have no ground truth folder at all (MVTec convention).
        assert _subdirs(base / "ground_truth") == set(DEFECT_TYPES)
        assert sorted(p.name for p in (base / "train" / "good").iterdir()) == ["000.png", "001.png", "002.png"]
        assert sorted(p.name for p in (base / "test" / "good").iterdir()) == ["000.png", "001.png"]
        for d in DEFECT_TYPES:
            imgs = sorted(p.name for p in (base / "test" / d).iterdir())
            masks = sorted(p.name for p in (base / "ground_truth" / d).iterdir())
            assert imgs == ["000.png", "001.png"]
            assert masks == [f"{Path(n).stem}_mask.png" for n in imgs]


def test_images_and_masks_format(demo_root: Path) -> None:
    for cat in DEMO_CATEGORIES:
        for p in (demo_root / cat).rglob("*.png"):
            img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            assert img is not None, p
            if "ground_truth" in p.parts:
                assert img.dtype == np.uint8 and img.ndim == 2, p
                assert set(np.unique(img).tolist()) <= {0, 255}, p
                assert (img == 255).any(), f"empty defect mask {p}"
                assert 0.005 <= (img == 255).mean() <= 0.08, p
                image = p.parents[2] / "test" / p.parent.name / (p.name.replace("_mask", ""))
                assert cv2.imread(str(image), cv2.IMREAD_UNCHANGED).shape[:2] == img.shape
            else:
                assert img.shape == (64, 64, 3) and img.dtype == np.uint8, p


def test_manifest_records_parameters(demo_root: Path) -> None:
    m = json.loads((demo_root / "manifest.json").read_text())
    for k, v in PARAMS.items():
        assert m[k] == v
    assert m["categories"] == list(DEMO_CATEGORIES)
    assert isinstance(m["version"], int)


def test_defects_change_pixels_inside_mask_only(demo_root: Path) -> None:
    for cat in DEMO_CATEGORIES:
        for s in iter_category_samples(cat, **PARAMS):
            on_disk = cv2.imread(str(demo_root / cat / s.split / s.label / f"{s.stem}.png"), cv2.IMREAD_COLOR)
            # The files are exactly what the generator yields, so its clean image is the reference.
            np.testing.assert_array_equal(on_disk, s.image)
            if s.mask is None:
                continue
            disk_mask = cv2.imread(str(demo_root / cat / "ground_truth" / s.label / f"{s.stem}_mask.png"),
                                   cv2.IMREAD_GRAYSCALE)
            np.testing.assert_array_equal(disk_mask, s.mask)
            diff = np.abs(s.image.astype(np.int16) - s.clean.astype(np.int16)).max(axis=2)
            inside, outside = diff[s.mask > 0], diff[s.mask == 0]
            assert inside.mean() >= 25, (cat, s.label, s.stem, inside.mean())
            assert outside.mean() < 1.0, (cat, s.label, s.stem, outside.mean())
            assert outside.max() < 32, (cat, s.label, s.stem, outside.max())


def test_train_images_distinct_and_not_copied_into_test(demo_root: Path) -> None:
    for cat in DEMO_CATEGORIES:
        train = [cv2.imread(str(p)).astype(np.int16) for p in sorted((demo_root / cat / "train" / "good").iterdir())]
        test = [cv2.imread(str(p)).astype(np.int16) for p in sorted((demo_root / cat / "test" / "good").iterdir())]
        for a, b in itertools.combinations(train, 2):
            assert np.abs(a - b).mean() > 5
        for a, b in itertools.product(train, test):
            assert np.abs(a - b).mean() > 5


def test_categories_look_different(demo_root: Path) -> None:
    means = [cv2.imread(str(demo_root / c / "train" / "good" / "000.png")).reshape(-1, 3).mean(0)
             for c in DEMO_CATEGORIES]
    for a, b in itertools.combinations(means, 2):
        assert np.abs(a - b).max() > 10


@pytest.mark.slow
def test_deterministic_same_seed(demo_root: Path, tmp_path: Path) -> None:
    again = _build(tmp_path / "again")
    assert _all_files(again) == _all_files(demo_root)


@pytest.mark.slow
def test_different_seed_differs(demo_root: Path, tmp_path: Path) -> None:
    other = _all_files(_build(tmp_path / "other", seed=1))
    ref = _all_files(demo_root)
    assert other.keys() == ref.keys()
    pngs = [k for k in ref if k.endswith(".png") and "ground_truth" not in k]
    assert all(other[k] != ref[k] for k in pngs)


def test_cached_second_call_rewrites_nothing(tmp_path: Path) -> None:
    root = _build(tmp_path / "d", categories=("gravel",))
    before = _mtimes(root)
    assert _build(tmp_path / "d", categories=("gravel",)) == root
    assert _mtimes(root) == before


def test_changed_parameters_rebuild_and_drop_stale_files(tmp_path: Path) -> None:
    root = _build(tmp_path / "d", categories=("brick", "grass"))
    _build(root, categories=("brick",), n_train=2)
    assert _subdirs(root) == {"brick"}  # grass belonged to the old build: removed
    assert sorted(p.name for p in (root / "brick" / "train" / "good").iterdir()) == ["000.png", "001.png"]
    assert json.loads((root / "manifest.json").read_text())["n_train"] == 2


def test_incomplete_build_is_redone(tmp_path: Path) -> None:
    root = _build(tmp_path / "d", categories=("grass",))
    ref = _all_files(root)
    # No manifest = an interrupted build; a missing file = a damaged one. Both must rebuild.
    (root / "manifest.json").unlink()
    (root / "grass" / "test" / "crack" / "001.png").write_bytes(b"garbage")
    _build(root, categories=("grass",))
    assert _all_files(root) == ref
    (root / "grass" / "ground_truth" / "hole" / "000_mask.png").unlink()
    _build(root, categories=("grass",))
    assert _all_files(root) == ref


def test_other_folders_under_root_survive_rebuild(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "user_data").mkdir(parents=True)
    (root / "user_data" / "keep.txt").write_text("mine")
    _build(root, categories=("brick",))
    _build(root, categories=("brick",), seed=5)
    assert (root / "user_data" / "keep.txt").read_text() == "mine"


def test_unknown_category_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(TransFusionError, match="carpet"):
        _build(tmp_path / "d", categories=("carpet",))


def test_preview_written(demo_root: Path, tmp_path: Path) -> None:
    out = write_preview(demo_root, tmp_path / "preview.png")
    sheet = cv2.imread(str(out))
    assert sheet is not None and sheet.shape[0] > 3 * 128 and sheet.shape[1] > 10 * 128
