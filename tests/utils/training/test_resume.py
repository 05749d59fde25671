"""A run killed at any moment continues, with --resume, exactly as if it had never stopped."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.fixtures.helpers import REPO, TINY_FLAGS, cli
from tests.fixtures.layouts import make_mvtec

# every test here drives the command line, a subprocess or a trained run
pytestmark = pytest.mark.slow

EPOCHS = "4"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("mvtec"), n_train=12, n_test_good=1, defects=("crack",),
                      n_per_defect=1, size=32)


def common(data: Path, logs: Path) -> list[str]:
    return ["-d", str(data), "--category", "bottle", "--log-path", str(logs), "--save-every", "1",
            "--epoch-num", EPOCHS, *TINY_FLAGS]


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> dict[str, torch.Tensor]:
    logs = tmp_path_factory.mktemp("ref")
    cli("-c", "train", "-r", "ref", *common(data, logs))
    return torch.load(logs / "ref" / "models" / "bottle_model.pkl", weights_only=True)


def start_and_stop(data: Path, logs: Path, sig: int) -> subprocess.Popen:
    """Start training; send `sig` once the first checkpoint exists (so mid-way through epoch 2)."""
    proc = subprocess.Popen([sys.executable, str(REPO / "Experiment.py"), "-c", "train", "-r", "k",
                             *common(data, logs)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    models = logs / "k" / "models"
    deadline = time.time() + 300
    while not list(models.glob("bottle_state_e00001_*.pt")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait(timeout=300)
    return proc


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sigkill_then_resume_matches_uninterrupted_run(data, tmp_path, uninterrupted):
    proc = start_and_stop(data, tmp_path, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    # nothing half-written is left where a reader would take it for a checkpoint
    models = tmp_path / "k" / "models"
    assert all(not p.name.endswith(".pt") or p.name.startswith("bottle_state_e") for p in models.iterdir())
    out = cli("-c", "train", "-r", "k", "--resume", *common(data, tmp_path))
    assert "resuming at epoch" in out.stdout
    assert_same_weights(torch.load(models / "bottle_model.pkl", weights_only=True), uninterrupted)


def test_ctrl_c_saves_mid_epoch_and_resume_matches(data, tmp_path, uninterrupted):
    proc = start_and_stop(data, tmp_path, signal.SIGINT)
    text = proc.stdout.read()
    # 130 = 128 + SIGINT after saving, so `train && test` does not test a half-trained model
    assert proc.returncode == 130, text
    lines = text.splitlines()
    # said once: the acknowledgement when the key is pressed, and what was saved at the end
    assert text.count("checkpoint saved") == 1 and sum(ln.startswith("Ctrl-C:") for ln in lines) == 1, text
    (saved,) = [ln for ln in lines if "checkpoint saved" in ln]
    newest = sorted((tmp_path / "k" / "models").glob("bottle_state_*.pt"))[-1]
    assert saved.startswith("interrupted: [bottle] checkpoint saved: ") and str(newest) in saved
    assert "--resume" in saved
    out = cli("-c", "train", "-r", "k", "--resume", *common(data, tmp_path))
    assert "resuming at epoch" in out.stdout
    models = tmp_path / "k" / "models"
    assert_same_weights(torch.load(models / "bottle_model.pkl", weights_only=True), uninterrupted)


def test_damaged_newest_state_falls_back_to_an_older_one(data, tmp_path, uninterrupted):
    cli("-c", "train", "-r", "k", *common(data, tmp_path), "--epoch-num", "2", "--keep-last", "2")
    models = tmp_path / "k" / "models"
    newest = sorted(models.glob("bottle_state_*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, as after a crash mid-copy
    out = cli("-c", "train", "-r", "k", "--resume", *common(data, tmp_path))
    assert "unreadable" in out.stdout and "resuming at epoch 2" in out.stdout
    assert_same_weights(torch.load(models / "bottle_model.pkl", weights_only=True), uninterrupted)
