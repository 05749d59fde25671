"""MVTec AD 2's layout (docs/method.md §11) as discovery reads it, on a miniature copy."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data.catalog import DATASET_CATEGORIES, MVTEC_AD2_PRIVATE_COUNTS
from data.discovery import (
    find_private_images,
    find_test_samples,
    find_train_images,
    find_validation_images,
    present_categories,
    resolve_categories,
)
from data.io import read_mask_native
from tests.fixtures.layouts import make_mvtec_ad2
from utils.core.errors import TransFusionError

SCENARIOS = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")


def test_the_eight_scenarios_and_their_official_private_counts():
    assert DATASET_CATEGORIES["mvtec_ad2"] == SCENARIOS
    assert MVTEC_AD2_PRIVATE_COUNTS == {"can": 321, "fabric": 314, "fruit_jelly": 255, "rice": 277,
                                        "sheet_metal": 142, "vial": 276, "wallplugs": 232, "walnuts": 228}


def test_every_split_is_found_where_the_layout_puts_it(tmp_path):
    root = make_mvtec_ad2(tmp_path, categories=("can", "rice"), n_train=3, n_validation=2, n_good=2, n_bad=3,
                          n_private=4, grey=("rice",))
    assert [p.name for p in find_train_images("mvtec_ad2", root, "can")] == [f"{i:03d}_regular.png" for i in range(3)]
    validation = find_validation_images("mvtec_ad2", root, "can")
    assert len(validation) == 2 and all(p.parent == root / "can" / "validation" / "good" for p in validation)
    samples = find_test_samples("mvtec_ad2", root, "rice")
    bad = [s for s in samples if s.defect == "bad"]
    assert len(bad) == 3 and all(s.label == 1 for s in bad) and all(s.label == 0 for s in samples if s not in bad)
    for s in bad:  # the mask beside it, at the image's own (non-square) size, 0/255 on disk
        assert s.mask_path == root / "rice" / "test_public" / "ground_truth" / "bad" / f"{s.image_path.stem}_mask.png"
        mask = read_mask_native(s.mask_path)
        assert mask.shape == (28, 40) and mask.dtype == bool
        assert set(np.unique(np.asarray(Image.open(s.mask_path)))) <= {0, 255}
    private = find_private_images(root, "can")
    assert [p.name for p in private["test_private"]] == [f"{i:03d}_regular.png" for i in range(4)]
    assert [p.name for p in private["test_private_mixed"]] == [f"{i:03d}_mixed.png" for i in range(4)]
    assert Image.open(find_train_images("mvtec_ad2", root, "rice")[0]).mode == "L"  # a single-channel scenario
    assert present_categories("mvtec_ad2", root) == ["can", "rice"]
    assert resolve_categories("mvtec_ad2", root, "rice,can") == ["rice", "can"]


def test_a_bad_image_without_its_mask_and_a_missing_private_set_are_one_line(tmp_path):
    root = make_mvtec_ad2(tmp_path)
    (root / "can" / "test_public" / "ground_truth" / "bad" / "000_regular_mask.png").unlink()
    with pytest.raises(TransFusionError, match="000_regular_mask.png"):
        find_test_samples("mvtec_ad2", root, "can")
    for p in (root / "can" / "test_private_mixed").iterdir():
        p.unlink()
    (root / "can" / "test_private_mixed").rmdir()
    with pytest.raises(TransFusionError, match="test_private_mixed"):
        find_private_images(root, "can")


def test_foreground_masks_are_all_ones_unless_computed_ones_are_asked_for(tmp_path):
    from data.fg_masks import FgMaskSource

    root = make_mvtec_ad2(tmp_path)
    train = find_train_images("mvtec_ad2", root, "can")
    common = dict(dataset="mvtec_ad2", category="can", train_paths=train, img_size=32, fg_mask_path=None,
                  use_fg_masks=True, cache_dir=None)
    assert FgMaskSource.for_category(**common) is None  # None: anomalies anywhere
    computed = FgMaskSource.for_category(**common, computed=True)
    assert computed is not None and len(computed) == len(train) and computed.source.startswith("computed")
