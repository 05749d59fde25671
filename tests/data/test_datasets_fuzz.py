"""Never crash on bad input: damaged files inside whole datasets, and errors raised in DataLoader
workers (the rules: tests/fixtures/fuzzing.py)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.fuzzing import clean_error
from tests.fixtures.layouts import make_mvtec3d
from utils.core.errors import TransFusionError

# ----------------------------------------------------------------------------- whole datasets


@pytest.mark.parametrize("target", ["train rgb", "test rgb", "test mask", "train xyz", "test xyz"])
@pytest.mark.parametrize("damage", ["truncate", "empty", "noise"])
def test_datasets_name_the_damaged_file(tmp_path: Path, target: str, damage: str) -> None:
    from data.datasets import TestDataset, TrainDataset

    root = make_mvtec3d(tmp_path, category="tire", n_train=2, n_val=0, n_test_good=1, n_per_defect=1, size=16)
    cat = root / "tire"
    victim = {"train rgb": cat / "train/good/rgb/001.png", "test rgb": cat / "test/hole/rgb/000.png",
              "test mask": cat / "test/hole/gt/000.png", "train xyz": cat / "train/good/xyz/000.tiff",
              "test xyz": cat / "test/good/xyz/000.tiff"}[target]
    data = victim.read_bytes()
    victim.write_bytes({"truncate": data[: len(data) // 2], "empty": b"",
                        "noise": np.random.default_rng(1).bytes(len(data))}[damage])
    mode = "rgbd"
    with pytest.raises(TransFusionError) as info:
        train = TrainDataset("mvtec3d", root, "tire", mode, 16)
        [train[i] for i in range(len(train))]
        test = TestDataset("mvtec3d", root, "tire", mode, 16, depth_norm=train.depth_norm)
        [test[i] for i in range(len(test))]
    clean_error(info.value, victim)


class _Failing(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> torch.Tensor:
        raise TransFusionError(f"cannot read image '/data/{i}.png': truncated")


def test_error_raised_in_a_dataloader_worker_stays_one_line() -> None:
    loader = torch.utils.data.DataLoader(_Failing(), batch_size=1, num_workers=1)
    with pytest.raises(TransFusionError) as info:
        next(iter(loader))
    assert str(info.value) == "cannot read image '/data/0.png': truncated"
