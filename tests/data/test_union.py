"""The training set of -c train_multiclass (data/datasets.py UnionTrainDataset), against the words of
docs/method.md §10: the original's sorted glob order, each image with its own category's mask, one
depth range over the union."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.datasets import TrainDataset, UnionTrainDataset, union_order
from tests.fixtures.layouts import make_mvtec, make_mvtec3d


def test_union_order_is_the_sorted_glob_of_full_paths(tmp_path: Path):
    names = ["b", "a", "a-b", "a_b", "A"]
    for n in names:
        make_mvtec(tmp_path, n, n_train=2, n_test_good=0, defects=(), size=32)
    glob_order = sorted(str(p) for p in tmp_path.glob("*/train/good/*.png"))  # the original's sorted(glob)
    union = UnionTrainDataset([TrainDataset("mvtec", tmp_path, n, "rgb", 32) for n in names])
    assert [str(p) for p in union.paths] == glob_order
    assert union_order(names) == ["A", "a-b", "a", "a_b", "b"]  # "a-b/" sorts before "a/"
    assert len(union) == 10 and union[9]["image"].shape == (3, 32, 32)


def test_the_depth_range_is_one_over_the_union(tmp_path: Path):
    import tifffile

    root = tmp_path / "union"
    for name in ("near", "far"):
        built = make_mvtec3d(tmp_path / name, n_train=2, n_val=0, n_test_good=0, n_per_defect=0, size=32)
        root.mkdir(exist_ok=True)
        (root / name).symlink_to(built / "tire")
    for xyz in (root / "far" / "train" / "good" / "xyz").glob("*.tiff"):  # the far category lies 1 m further
        arr = tifffile.imread(xyz)
        arr[..., 2] = np.where(arr[..., 2] != 0, arr[..., 2] + 1.0, 0)
        tifffile.imwrite(xyz, arr, photometric="rgb")
    alone = TrainDataset("mvtec3d", root, "near", "d", 32)
    parts = [TrainDataset("mvtec3d", root, c, "d", 32) for c in ("near", "far")]
    own = [p.depth_norm for p in parts]
    union = UnionTrainDataset(parts)
    # gmin = 0.9·min(0, min z), gmax = 1.1·max(1, max z) over every raw tiff of the union (docs/method.md §1)
    raw = [tifffile.imread(f)[..., 2] for c in ("near", "far") for f in (root / c / "train" / "good" / "xyz").glob("*")]
    z = np.concatenate([r[r != 0] for r in raw])
    assert union.depth_norm == pytest.approx((0.9 * min(0.0, float(z.min())), 1.1 * max(1.0, float(z.max()))))
    assert own[1][1] > own[0][1] and all(p.depth_norm == union.depth_norm for p in parts)
    # the near category is scaled with the union's range, not its own
    assert not np.allclose(parts[0][0]["image"].numpy(), alone[0]["image"].numpy())
