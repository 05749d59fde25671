"""Never crash on bad input: damaged checkpoints and images met by the command line (the rules:
tests/fixtures/fuzzing.py)."""

from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.helpers import TINY_FLAGS, CliResult, cli
from tests.fixtures.layouts import make_mvtec

# ----------------------------------------------------------------------------- the CLI

def run_cli(*argv: str) -> CliResult:
    # the tiny network for one epoch, 3 steps; the test's own flags come last and win
    return cli(*TINY_FLAGS, "--diffusion-num-steps", "3", "--bs", "2", "--epoch-num", "1", *argv, check=False)


def assert_one_line_cli_error(proc: CliResult, needle: Path) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(needle) in err[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def small_mvtec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("mvtec"), category="bottle", n_train=3, n_test_good=1,
                      n_per_defect=1, size=32)


def test_cli_test_with_a_random_bytes_checkpoint(small_mvtec: Path, tmp_path: Path) -> None:
    weights = tmp_path / "logs" / "run" / "models" / "bottle_model.pkl"
    weights.parent.mkdir(parents=True)
    # a pickle-protocol-4 opcode first: torch.load warns about it before failing
    weights.write_bytes(b"\x80\x04\x95" + np.random.default_rng(0).bytes(3000))
    proc = run_cli("-c", "test", "-r", "run", "-d", str(small_mvtec), "-ds", "mvtec", "--category", "bottle",
                   "--log-path", str(tmp_path / "logs"), "--workers", "0")
    assert_one_line_cli_error(proc, weights)


def test_cli_train_with_a_corrupt_training_image(tmp_path: Path) -> None:
    # --workers 2: the error is raised inside a DataLoader worker process and must still
    # reach the user as one line, not as the worker's re-raised traceback
    data = make_mvtec(tmp_path / "data", category="bottle", n_train=3, n_test_good=1, n_per_defect=1, size=32)
    bad = data / "bottle" / "train" / "good" / "001.png"
    bad.write_bytes(bad.read_bytes()[:70])
    proc = run_cli("-c", "train", "-r", "run", "-d", str(data), "-ds", "mvtec", "--category", "bottle",
                   "--log-path", str(tmp_path / "logs"), "--workers", "2")
    assert_one_line_cli_error(proc, bad)
