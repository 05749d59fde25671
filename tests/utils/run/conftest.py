"""The tiny trained, tested and calibrated run that the meta tests damage: built once per session,
copied per test (a few MB) so that each test rewrites its own meta."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fixtures.helpers import cli, tiny_tested_run


@pytest.fixture(scope="session")
def calibrated_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data root, log path) of run "r", category bottle, 32 px, T = 5: trained one epoch, tested
    (F1-max threshold, its schedule and the heat-map scale stored) and calibrated (a record with
    every key -c calibrate writes)."""
    root = tmp_path_factory.mktemp("calibrated_run")
    data, logs, common = tiny_tested_run(root, "r", size=32)
    cli("-c", "calibrate", *common, "--target-fpr", "0.5", "--calib-path", str(data / "bottle" / "test" / "good"))
    return data, logs


@pytest.fixture
def run_copy(calibrated_run, tmp_path) -> tuple[Path, Path]:
    """A copy of `calibrated_run` of this test's own: (data root, log path)."""
    data, logs = calibrated_run
    shutil.copytree(logs, tmp_path / "logs")
    return data, tmp_path / "logs"
