"""Guards that keep a run from being lost: non-finite losses and maps, bad run folders, --dry-run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import utils.training.trainer as training
from data.datasets import TestDataset
from models.transparency import TransparencyProcess
from tests.fixtures.helpers import TINY_FLAGS, cli
from tests.fixtures.layouts import make_mvtec
from utils.Argparser import parse_args
from utils.core.errors import TransFusionError
from utils.evaluation.loop import evaluate
from utils.run.paths import RunPaths


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("mvtec"), n_train=4, n_test_good=1, defects=("crack",),
                      n_per_defect=1, size=32)


def _args(data: Path, logs: Path, *extra: str):
    return parse_args(["-c", "train", "-r", "g", "-d", str(data), "--category", "bottle",
                       "--log-path", str(logs), *TINY_FLAGS, *extra])


@pytest.mark.slow
def test_non_finite_losses_skip_steps_then_stop_keeping_the_last_checkpoint(data, tmp_path, monkeypatch):
    args = _args(data, tmp_path, "--epoch-num", "1")
    training.train_category(args, "bottle", torch.device("cpu"), RunPaths(tmp_path, "g"))
    weights = tmp_path / "g" / "models" / "bottle_model.pkl"
    before = weights.read_bytes()

    real = training.transfusion_loss

    def poisoned(*a, **k):
        terms = real(*a, **k)
        terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(training, "transfusion_loss", poisoned)
    args = _args(data, tmp_path, "--epoch-num", "10", "--resume")  # one batch per epoch
    with pytest.raises(TransFusionError, match="non-finite losses in a row"):
        training.train_category(args, "bottle", torch.device("cpu"), RunPaths(tmp_path, "g"))
    assert weights.read_bytes() == before  # the last good checkpoint is untouched


def test_evaluation_refuses_a_non_finite_map_naming_the_image(data):
    class NaNNet(torch.nn.Module):
        def forward(self, x, t):
            nan = torch.full_like(x[:, :3], float("nan"))
            return nan, nan, torch.zeros_like(x[:, :1])

    test = TestDataset("mvtec", data, "bottle", "rgb", 32)
    with pytest.raises(TransFusionError, match=r"not finite") as err:
        evaluate(NaNNet(), TransparencyProcess(5, "rgb"), test, torch.device("cpu"), progress=False)
    assert "bottle/test/" in str(err.value)


def test_a_file_where_the_models_folder_belongs_fails_at_start(data, tmp_path):
    """Works as root too (a read-only folder would not stop root): the run folder's models/
    is a file, so nothing can be written there."""
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "models").write_text("not a folder")
    result = cli("-c", "train", "-r", "g", "-d", str(data), "--category", "bottle", "--log-path", str(tmp_path),
                 *TINY_FLAGS, check=False)
    assert result.returncode == 2 and "cannot write to the run folder" in result.stderr
    assert str(tmp_path / "g" / "models") in result.stderr


def test_a_full_disk_fails_at_start(data, tmp_path, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1024))
    result = cli("-c", "train", "-r", "g", "-d", str(data), "--category", "bottle", "--log-path", str(tmp_path),
                 *TINY_FLAGS, check=False)
    assert result.returncode == 2 and "GiB free but the checkpoints need about" in result.stderr


def test_unwritable_log_path_fails_at_start(data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = cli("-c", "train", "-r", "g", "-d", str(data), "--category", "bottle",
                 "--log-path", str(blocker), *TINY_FLAGS, check=False)
    assert result.returncode == 2 and "cannot write to the run folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_dry_run_checks_everything_and_trains_nothing(data, tmp_path):
    out = cli("-c", "train", "-r", "g", "-d", str(data), "--category", "bottle", "--log-path",
              str(tmp_path), "--dry-run", *TINY_FLAGS).stdout
    assert "4 training images, 2 test images (1 anomalous): readable" in out
    assert "ready to train" in out
    assert not list((tmp_path / "g" / "models").glob("*.pkl"))


def test_dry_run_names_a_corrupt_image(tmp_path):
    root = make_mvtec(tmp_path / "d", n_train=3, n_test_good=1, defects=("crack",), n_per_defect=1, size=32)
    bad = root / "bottle" / "train" / "good" / "001.png"
    bad.write_bytes(bad.read_bytes()[:60])
    result = cli("-c", "train", "-r", "g", "-d", str(root), "--category", "bottle", "--log-path",
                 str(tmp_path / "logs"), "--dry-run", *TINY_FLAGS, check=False)
    assert result.returncode == 2 and str(bad) in result.stderr
