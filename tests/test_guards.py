"""Guards that keep a run from being lost: non-finite losses and maps, bad run folders, --dry-run."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import utils.training as training
from data.datasets import TestDataset
from models.transparency import TransparencyProcess
from tests.layouts import make_mvtec
from tests.test_cli import TINY, run
from utils.Argparser import parse_args
from utils.errors import TransFusionError
from utils.evaluation import evaluate
from utils.runs import RunPaths


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("mvtec"), n_train=4, n_test_good=1, defects=("crack",),
                      n_per_defect=1, size=32)


def _args(data: Path, logs: Path, *extra: str):
    return parse_args(["-c", "train", "-r", "g", "-d", str(data), "--category", "bottle",
                       "--log-path", str(logs), *TINY, *extra])


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


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_log_folder_fails_at_start(data, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    proc = run("-c", "train", "-r", "g", "-d", str(data), "--category", "bottle", "--log-path", str(ro),
               *TINY, check=False)
    assert proc.returncode == 2 and "cannot write to the run folder" in proc.stderr


def test_unwritable_log_path_fails_at_start(data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run("-c", "train", "-r", "g", "-d", str(data), "--category", "bottle",
               "--log-path", str(blocker), *TINY, check=False)
    assert proc.returncode == 2 and "cannot write to the run folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_dry_run_checks_everything_and_trains_nothing(data, tmp_path):
    proc = run("-c", "train", "-r", "g", "-d", str(data), "--category", "bottle", "--log-path",
               str(tmp_path), "--dry-run", *TINY)
    assert "4 training images, 2 test images (1 anomalous): readable" in proc.stdout
    assert "ready to train" in proc.stdout
    assert not list((tmp_path / "g" / "models").glob("*.pkl"))


def test_dry_run_names_a_corrupt_image(tmp_path):
    root = make_mvtec(tmp_path / "d", n_train=3, n_test_good=1, defects=("crack",), n_per_defect=1, size=32)
    bad = root / "bottle" / "train" / "good" / "001.png"
    bad.write_bytes(bad.read_bytes()[:60])
    proc = run("-c", "train", "-r", "g", "-d", str(root), "--category", "bottle", "--log-path",
               str(tmp_path / "logs"), "--dry-run", *TINY, check=False)
    assert proc.returncode == 2 and str(bad) in proc.stderr
