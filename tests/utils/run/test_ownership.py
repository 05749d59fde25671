"""No trained model lost (issue 16): who owns a run's category, refusing to replace trained
weights, Ctrl-C's exit status, what a run says it found, and the wording of its messages."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from data.catalog import DATASET_CATEGORIES
from data.depth import preprocess_depth
from tests.fixtures.helpers import REPO, TINY_FLAGS, cli, cli_subprocess
from tests.fixtures.layouts import make_mvtec

# every test here drives the command line, a subprocess or a trained run
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("mvtec"), n_train=4, n_test_good=1, defects=("crack",),
                      n_per_defect=1, size=32)


def common(data: Path, logs: Path, *extra: str) -> list[str]:
    return ["-d", str(data), "--category", "bottle", "--log-path", str(logs), "--epoch-num", "1",
            "--save-every", "1", *TINY_FLAGS, *extra]


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def train(data: Path, logs: Path, run: str = "r", *extra: str):
    return cli("-c", "train", "-r", run, *common(data, logs, *extra))


# ----------------------------------------------------------------------------- 1. two trainings at once


def test_a_second_training_of_the_same_run_and_category_refuses_at_start(data, tmp_path):
    """The issue's reproduction: two -c train on one run name (different --seed and
    --unet-n-blocks). Exactly one trains; the other refuses at once, naming the holder."""
    first = subprocess.Popen([sys.executable, str(REPO / "Experiment.py"), "-c", "train", "-r", "r",
                              *common(data, tmp_path, "--epoch-num", "10000")],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = tmp_path / "r" / "models" / "bottle.train.lock"
    try:
        deadline = time.time() + 120
        while not list(lock.parent.glob("bottle_state_*.pt")):  # training has started
            assert first.poll() is None, first.stdout.read()
            assert time.time() < deadline, "the first training did not start"
            time.sleep(0.05)
        holder = json.loads(lock.read_text())
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname() and holder["started"]
        second = cli_subprocess("-c", "train", "-r", "r", *common(data, tmp_path, "--seed", "7",
                                                                  "--unet-n-blocks", "2"), check=False)
        assert first.poll() is None, "the first training must still be running"
        line = one_error_line(second)
        assert str(lock) in line and f"pid {first.pid}" in line and "still running" in line
        assert "trained" not in second.stdout
    finally:
        first.kill()  # SIGKILL: its lock stays behind, as after a crash
        first.wait()
    assert lock.exists()
    # the holder is dead on this host: the next training takes the lock over, with a note
    out = cli("-c", "train", "-r", "r", *common(data, tmp_path, "--resume"))
    assert f"taking over the lock {lock}" in out.stdout and "no longer running" in out.stdout
    assert not lock.exists()  # released at the end


def test_a_lock_from_another_host_is_never_broken(data, tmp_path):
    lock = tmp_path / "r" / "models" / "bottle.train.lock"
    lock.parent.mkdir(parents=True)
    text = json.dumps({"pid": 1, "host": "gpu-node-7", "started": "2026-01-01T00:00:00",
                       "purpose": "-c train -r r --category bottle", "token": "x"})
    lock.write_text(text)
    line = one_error_line(cli("-c", "train", "-r", "r", *common(data, tmp_path), check=False))
    assert "gpu-node-7" in line and f"rm '{lock}'" in line
    assert lock.read_text() == text and not (lock.parent / "bottle_model.pkl").exists()


def test_a_test_writing_results_holds_the_results_lock_not_the_training_one(data, tmp_path):
    """-c test runs beside a training (it does not take the train lock) but writes a category's
    results under <run>/results/<category>.lock, which a second writer waits for."""
    from utils.run.locks import held
    from utils.run.paths import RunPaths

    train(data, tmp_path)
    paths = RunPaths(tmp_path, "r")
    with held(paths.train_lock("bottle"), "a training"):  # a training holds its lock meanwhile
        cli("-c", "test", "-r", "r", *common(data, tmp_path))
    assert (tmp_path / "r" / "results" / "bottle" / "summary.json").is_file()
    assert not paths.results_lock("bottle").exists()  # released after writing
    with held(paths.results_lock("bottle"), "another test"):
        from utils.run.locks import LockHeld, acquire

        with pytest.raises(LockHeld, match="another test"):
            acquire(paths.results_lock("bottle"), "a second test", wait_s=0.3)


# ----------------------------------------------------------------------------- 2. refusing to replace


def test_training_again_refuses_to_replace_trained_weights(data, tmp_path):
    train(data, tmp_path)
    weights = tmp_path / "r" / "models" / "bottle_model.pkl"
    before = weights.read_bytes()
    line = one_error_line(cli("-c", "train", "-r", "r", *common(data, tmp_path), check=False))
    assert "bottle" in line and "--resume" in line and "--overwrite" in line
    assert weights.read_bytes() == before
    out = cli("-c", "train", "-r", "r", *common(data, tmp_path), "--dry-run").stdout  # says so beforehand
    assert "warning: -c train would refuse to start: " in out and "1 warning(s)" in out


def test_overwrite_refuses_while_a_test_writes_the_results_moving_nothing(data, tmp_path):
    from utils.run.locks import held
    from utils.run.paths import RunPaths

    train(data, tmp_path)
    cli("-c", "test", "-r", "r", *common(data, tmp_path))
    models = tmp_path / "r" / "models"
    before = sorted(p.name for p in models.iterdir())
    with held(RunPaths(tmp_path, "r").results_lock("bottle"), "-c test -r r --category bottle"):
        line = one_error_line(cli("-c", "train", "-r", "r", *common(data, tmp_path, "--overwrite"), check=False))
    assert "results/bottle.lock" in line and "-c test -r r" in line
    assert sorted(p.name for p in models.iterdir()) == before and not list((tmp_path / "r").glob("replaced-*/*"))


def test_overwrite_moves_everything_aside_and_deletes_nothing(data, tmp_path):
    train(data, tmp_path)
    cli("-c", "test", "-r", "r", *common(data, tmp_path))
    run = tmp_path / "r"
    old = {p.name: p.read_bytes() for p in (run / "models").glob("bottle_*")}
    assert {"bottle_model.pkl", "bottle_meta.json"} <= old.keys() and any("_state_" in n for n in old)
    old_summary = (run / "results" / "bottle" / "summary.json").read_bytes()
    calibration = run / "calibration" / "bottle" / "calibration.json"  # belongs to the old model too
    calibration.parent.mkdir(parents=True)
    calibration.write_text("{}")

    out = train(data, tmp_path, "r", "--overwrite", "--seed", "11").stdout
    replaced = list(run.glob("replaced-*"))
    assert len(replaced) == 1 and f"moved to {replaced[0] / 'bottle'}" in out
    moved = replaced[0] / "bottle"
    assert {p.name: p.read_bytes() for p in moved.glob("bottle_*")} == old  # byte for byte
    assert (moved / "results" / "summary.json").read_bytes() == old_summary
    assert (moved / "tensorboard").is_dir()
    assert (moved / "calibration" / "calibration.json").is_file() and not calibration.exists()
    assert (run / "models" / "bottle_model.pkl").read_bytes() != old["bottle_model.pkl"]  # trained anew
    assert not (run / "results" / "bottle").exists()  # the new model has no results yet


def test_resume_of_weights_without_training_state_is_one_line(data, tmp_path):
    """Released weights (or a run whose states were removed): --resume has nothing to continue."""
    train(data, tmp_path)
    for p in (tmp_path / "r" / "models").glob("bottle_state_*.pt"):
        p.unlink()
    line = one_error_line(cli("-c", "train", "-r", "r", *common(data, tmp_path, "--resume"), check=False))
    assert "no training state" in line and "--overwrite" in line


def test_category_all_names_every_category_with_weights_before_anything_starts(tmp_path):
    root = tmp_path / "data"
    for cat in ("bottle", "cable"):
        make_mvtec(root, category=cat, n_train=2, n_test_good=1, n_per_defect=1, size=32)
    for cat in DATASET_CATEGORIES["mvtec"]:
        (root / cat).mkdir(exist_ok=True)  # present, but untrainable: nothing may start on them
    logs = tmp_path / "logs"
    for cat in ("bottle", "cable"):
        cli("-c", "train", "-r", "r", "-d", str(root), "--category", cat, "--log-path", str(logs),
            "--epoch-num", "1", *TINY_FLAGS)
    before = sorted(p.name for p in (logs / "r" / "models").iterdir())
    # --skip-broken: past the refusal of the 13 empty categories, to the one about trained weights
    result = cli("-c", "train", "-r", "r", "-d", str(root), "--category", "all", "--log-path", str(logs),
                 "--epoch-num", "1", "--skip-broken", *TINY_FLAGS, check=False)
    line = one_error_line(result)
    assert "bottle, cable" in line
    assert "categories on " not in result.stdout  # refused before any category started ("training 2 ...")
    assert sorted(p.name for p in (logs / "r" / "models").iterdir()) == before


def test_the_demo_runs_twice_overwriting_its_own_run(tmp_path):
    """-c demo: its run folder is its own, so a second demo replaces the first as --overwrite
    does, and says so (a tiny demo: one category, the tiny network, one epoch)."""
    argv = ["-c", "demo", "--log-path", str(tmp_path / "logs"), "--demo-path", str(tmp_path / "demo_data"),
            "--category", "brick", "--epoch-num", "1", *TINY_FLAGS]
    first = cli(*argv)
    weights = tmp_path / "logs" / "demo" / "models" / "brick_model.pkl"
    before = weights.read_bytes()
    assert "AVG AUROC" in first.stdout and "holds a previous demo" not in first.stdout
    second = cli(*argv)
    assert "holds a previous demo" in second.stdout and "--overwrite" in second.stdout
    assert "AVG AUROC" in second.stdout
    (replaced,) = (tmp_path / "logs" / "demo").glob("replaced-*")
    assert (replaced / "brick" / "brick_model.pkl").read_bytes() == before


# ----------------------------------------------------------------------------- torchrun


def _torchrun(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(REPO / "Experiment.py"), *argv],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_under_torchrun_a_refusal_on_one_rank_stops_every_rank(tmp_path):
    """--split-categories: each rank locks its own categories. Rank 1's first category (cable) is
    held by a live process, so rank 1 refuses; rank 0 must learn of it and train nothing (no rank
    left waiting at a barrier: the run ends well within the timeout)."""
    root = tmp_path / "data"
    for cat in DATASET_CATEGORIES["mvtec"]:
        make_mvtec(root, category=cat, n_train=2, n_test_good=1, n_per_defect=1, size=32)
    lock = tmp_path / "logs" / "r" / "models" / "cable.train.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now",
                                "purpose": "-c train -r r --category cable", "token": "t"}))
    proc = _torchrun("-c", "train", "-r", "r", "-d", str(root), "--category", "all", "--split-categories",
                     "--log-path", str(tmp_path / "logs"), "--epoch-num", "1", *TINY_FLAGS)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error: " in ln]
    assert len(errors) == 2 and all(f"pid {os.getpid()}" in ln and str(lock) in ln for ln in errors), proc.stderr
    assert not list(lock.parent.glob("*_model.pkl"))  # rank 0 trained nothing either
    assert sorted(p.name for p in lock.parent.glob("*.lock")) == ["cable.train.lock"]  # rank 0 let its go


def test_under_torchrun_rank_0_refusing_trained_weights_stops_both(data, tmp_path):
    train(data, tmp_path)
    weights = tmp_path / "r" / "models" / "bottle_model.pkl"
    before = weights.read_bytes()
    proc = _torchrun("-c", "train", "-r", "r", *common(data, tmp_path))
    assert proc.returncode != 0, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error: " in ln]
    assert len(errors) == 2 and all("already has trained weights for bottle" in ln for ln in errors), proc.stderr
    assert weights.read_bytes() == before


# ----------------------------------------------------------------------------- 5. what a run found


def test_a_run_says_what_it_found_and_what_it_skipped(tmp_path):
    root = make_mvtec(tmp_path / "data", n_train=4, n_test_good=1, defects=("crack",), n_per_defect=1, size=32)
    good = root / "bottle" / "train" / "good"
    (good / "004.jpg").write_bytes((good / "000.png").read_bytes())  # an image MVTec's layout does not read
    (good / "._000.png").write_bytes(b"\0\5\26\7")  # a macOS resource fork
    (good / "005.png").symlink_to(tmp_path / "gone.png")  # a broken link
    out = cli("-c", "train", "-r", "r", "-d", str(root), "--category", "bottle", "--log-path", str(tmp_path / "l"),
              "--epoch-num", "1", *TINY_FLAGS).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("[bottle] found"))
    assert line.startswith("[bottle] found 4 training images, 2 test images (1 anomalous); skipped 3 files")
    assert "train/good/004.jpg" in line and "reads .png" in line
    assert "hidden: train/good/._000.png" in line and "train/good/005.png" in line
    out = cli("-c", "test", "-r", "r", "-d", str(root), "--category", "bottle", "--log-path", str(tmp_path / "l"),
              *TINY_FLAGS).stdout
    assert "[bottle] found 2 test images (1 anomalous)" in out


# ----------------------------------------------------------------------------- 6. wording


def test_an_empty_category_is_not_reported_as_the_data_root(data, tmp_path):
    result = cli("-c", "train", "-r", "r", "-d", str(data), "--category", "", "--log-path", str(tmp_path),
                 *TINY_FLAGS, check=False)
    line = one_error_line(result)
    assert "--category is empty" in line and "bottle" in line
    assert f"'{data}' not found" not in line and f"'{data}/' not found" not in line


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:2000])


def test_a_truncated_checkpoint_of_ones_own_run_is_not_answered_with_re_download(data, tmp_path):
    train(data, tmp_path)
    models = tmp_path / "r" / "models"
    weights = models / "bottle_model.pkl"
    good = weights.read_bytes()
    test = ["-c", "test", "-r", "r", *common(data, tmp_path)]

    # with training states: -c train --resume rewrites the weights (the run is already complete)
    _truncate(weights)
    line = one_error_line(cli(*test, check=False))
    assert "re-download" not in line and "--resume" in line and str(weights) in line
    out = cli("-c", "train", "-r", "r", *common(data, tmp_path, "--resume")).stdout
    assert "rewritten from the training state" in out and weights.read_bytes() == good
    cli(*test)

    # the states pruned or absent: the weights can only be trained again
    for p in models.glob("bottle_state_*.pt"):
        p.unlink()
    _truncate(weights)
    line = one_error_line(cli(*test, check=False))
    assert "re-download" not in line and "--overwrite" in line


def test_released_weights_that_are_truncated_still_point_to_the_download(data, tmp_path):
    from models.checkpoint import save_released
    from models.unet import TransFusionUNet, UNetConfig
    from tests.fixtures.helpers import TINY_NET

    weights = tmp_path / "released" / "models" / "bottle_model.pkl"
    weights.parent.mkdir(parents=True)
    save_released(TransFusionUNet(UNetConfig(mode="rgb", **TINY_NET)), weights)
    _truncate(weights)
    line = one_error_line(cli("-c", "test", "-r", "released", *common(data, tmp_path), check=False))
    assert "re-download" in line


def test_the_empty_xyz_warning_does_not_claim_measured_points():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, plane = preprocess_depth(np.zeros((16, 16, 3), np.float32), 16, name="empty.tiff")
    (w,) = caught
    text = str(w.message)
    assert "every measured point" not in text and "no measured point" in text
    assert not plane.any()


def test_a_warning_under_the_command_line_is_one_line(tmp_path):
    """A mask whose size differs from its image: the warning is `warning: <message>`, not
    `file:line: UserWarning: ...` plus the Python source line that raised it."""
    root = make_mvtec(tmp_path / "data", n_train=4, n_test_good=1, defects=("crack",), n_per_defect=1, size=32)
    mask = root / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    from PIL import Image

    Image.open(mask).resize((16, 16)).save(mask)
    result = cli("-c", "train", "-r", "r", "-d", str(root), "--category", "bottle", "--log-path",
                 str(tmp_path / "l"), "--epoch-num", "1", *TINY_FLAGS, "--eval-epoch-num", "1")
    lines = [ln for ln in result.stderr.splitlines() if "mask is 16x16" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {mask}: mask is 16x16"), result.stderr
    assert "UserWarning" not in result.stderr and "warnings.warn" not in result.stderr
