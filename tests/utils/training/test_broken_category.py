"""``--category all`` with broken categories (issue 26, item 6): every category's files are checked
(what --dry-run checks) before the first is trained; one line names all broken ones and nothing is
trained, unless --skip-broken, which trains the rest and lists what it skipped at the end; under
torchrun every rank agrees."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data.catalog import DATASET_CATEGORIES
from tests.fixtures.helpers import REPO, TINY_FLAGS, cli
from tests.fixtures.layouts import make_mvtec

# every test here drives the command line (training, or torchrun)
pytestmark = pytest.mark.slow

TRAINABLE = ("bottle", "carpet")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """MVTec AD with bottle and carpet complete, cable without train/good (the issue's case), a
    truncated test image in grid, and the other eleven category folders empty."""
    root = tmp_path_factory.mktemp("mvtec")
    for cat in (*TRAINABLE, "cable", "grid"):
        make_mvtec(root, category=cat, n_train=2, n_test_good=1, n_per_defect=1, size=32)
    shutil.rmtree(root / "cable" / "train" / "good")
    bad = root / "grid" / "test" / "good" / "000.png"
    bad.write_bytes(bad.read_bytes()[:60])
    for cat in DATASET_CATEGORIES["mvtec"]:
        (root / cat).mkdir(exist_ok=True)
    return root


def argv(data: Path, logs: Path, *extra: str) -> list[str]:
    return ["-c", "train", "-r", "r", "-d", str(data), "--category", "all", "--log-path", str(logs),
            "--epoch-num", "1", *TINY_FLAGS, *extra]


def test_all_broken_categories_are_named_before_anything_is_trained(data, tmp_path):
    result = cli(*argv(data, tmp_path), check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    line = lines[0]
    broken = [c for c in DATASET_CATEGORIES["mvtec"] if c not in TRAINABLE]
    assert f"{len(broken)} of the 15 categories cannot be trained" in line
    for cat in broken:
        assert f"{cat}: " in line, cat
    assert f"no training images in '{data / 'cable' / 'train' / 'good'}'" in line  # why cable
    assert str(data / "grid" / "test" / "good" / "000.png") in line  # why grid: its truncated test image
    assert "--skip-broken" in line
    assert not (tmp_path / "r" / "models").exists() or not list((tmp_path / "r" / "models").glob("*_model.pkl"))


def test_skip_broken_trains_the_rest_and_lists_what_it_skipped_at_the_end(data, tmp_path):
    result = cli(*argv(data, tmp_path, "--skip-broken"))
    models = tmp_path / "r" / "models"
    assert sorted(p.name for p in models.glob("*_model.pkl")) == [f"{c}_model.pkl" for c in TRAINABLE]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("skipped 13 broken categories (--skip-broken): ")
    assert "cable: no training images" in last and "grid: " in last and "bottle" not in last.split(":")[0]


def test_dry_run_names_the_same_broken_categories(data, tmp_path):
    """--dry-run and -c train check with one function: the same refusal."""
    dry = cli(*argv(data, tmp_path, "--dry-run"), check=False)
    train = cli(*argv(data, tmp_path), check=False)
    assert dry.returncode == train.returncode == 2 and dry.stderr == train.stderr


def test_under_torchrun_every_rank_refuses_a_broken_category(data, tmp_path):
    """Rank 0 checks the files and every rank takes its verdict: both refuse at once (none is left
    waiting at a barrier) and nothing is trained."""
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(REPO / "Experiment.py"), *argv(data, tmp_path, "--split-categories")],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error: " in ln]
    assert len(errors) == 2 and all("13 of the 15 categories cannot be trained" in ln for ln in errors), proc.stderr
    assert not list((tmp_path / "r" / "models").glob("*_model.pkl"))
