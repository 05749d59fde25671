"""A full disk during training (issue 26, item 4): one line that says what could not be written, how
much space is free, which checkpoint is intact and that --resume continues from it; the previous
checkpoint and weights as they were, no temporary file left, the lock released, and --resume,
once there is room, continuing from the named checkpoint.

The full disk is injected (the write of a chosen file fails with ENOSPC half-way, as a real one
does) and, when the tests run as root, real: the run folder on a tmpfs too small for a second
checkpoint.
"""
from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.fixtures.helpers import TINY_FLAGS, cli
from tests.fixtures.layouts import make_mvtec

# every test here trains
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("mvtec"), n_train=4, n_test_good=1, defects=("crack",),
                      n_per_defect=1, size=32)


def train(data: Path, logs: Path, epochs: int, *extra: str):
    return cli("-c", "train", "-r", "r", "-d", str(data), "--category", "bottle", "--log-path", str(logs),
               "--save-every", "1", "--epoch-num", str(epochs), *TINY_FLAGS, *extra, check=False)


class _FillsUp:
    """A file whose first write stores half of its bytes, then fails as a full disk does."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def __enter__(self) -> "_FillsUp":
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()

    def write(self, data: bytes) -> int:
        self.f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


class _DiskFullFor:
    """utils/core/atomic.py's ``os``, except that writing a temporary file for which ``full(name)``
    holds fails with ENOSPC."""

    def __init__(self, full: Callable[[str], bool]) -> None:
        self.full = full

    def fdopen(self, fd: int, *args: Any, **kwargs: Any) -> Any:
        f = os.fdopen(fd, *args, **kwargs)
        return _FillsUp(f) if self.full(os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))) else f

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def _after_one_epoch(data: Path, logs: Path, *extra: str) -> tuple[Path, bytes, Path]:
    assert train(data, logs, 1, *extra).returncode == 0
    models = logs / "r" / "models"
    state = models / "bottle_state_e00001_b00000.pt"
    assert state.is_file()
    return models, (models / "bottle_model.pkl").read_bytes(), state


def _left_as_it_was(models: Path, weights: bytes, state: Path) -> None:
    assert (models / "bottle_model.pkl").read_bytes() == weights  # the previous weights, untouched
    assert sorted(p.name for p in models.glob("bottle_state_*.pt")) == [state.name]
    assert not [p.name for p in models.iterdir() if p.name.endswith(".tmp")]  # no temporary file left
    assert not (models / "bottle.train.lock").exists()  # the lock was released


@pytest.mark.parametrize("fails", ["the training state", "the weights"])
def test_a_full_disk_while_saving_is_one_line_and_resume_continues(data, tmp_path, monkeypatch, fails):
    """The second checkpoint's training state (or its weights, once the state is written) meets a
    full disk: the new state is not kept (the newest state must be the one the weights come from)."""
    models, weights, state = _after_one_epoch(data, tmp_path)
    new_state = "bottle_state_e00002_b00000.pt"
    if fails == "the training state":
        full = lambda name: name.startswith(f".{new_state}.")  # noqa: E731
        failed = models / new_state
    else:
        full = lambda name: name.startswith(".bottle_model.pkl.") and (models / new_state).exists()  # noqa: E731
        failed = models / "bottle_model.pkl"
    import utils.core.atomic

    monkeypatch.setattr(utils.core.atomic, "os", _DiskFullFor(full))
    line = one_error_line(train(data, tmp_path, 2, "--resume"))
    assert f"cannot write the checkpoint {failed} ({os.strerror(errno.ENOSPC)})" in line, line
    assert " free on " in line and str(models) in line  # how much space is left
    assert f"the last checkpoint {state} " in line and "intact" in line and "--resume" in line
    _left_as_it_was(models, weights, state)

    monkeypatch.undo()  # room again: --resume continues from the checkpoint the line named
    out = train(data, tmp_path, 2, "--resume")
    assert out.returncode == 0 and "[bottle] resuming at epoch 2" in out.stdout, out.stdout + out.stderr
    assert (models / new_state).is_file()


def _mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_really_full_disk_while_saving_is_one_line(data, tmp_path):
    """The run folder on a 14 MiB tmpfs: room for the start-up check (16 bytes per parameter with
    --keep-last 1) and the first checkpoint (a 7 MB state and 2.4 MB weights of the tiny network),
    not for the second state beside the first."""
    import torch

    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "14m"):
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    try:
        models = disk / "r" / "models"
        state = models / "bottle_state_e00001_b00000.pt"
        line = one_error_line(train(data, disk, 2, "--keep-last", "1"))
        assert f"cannot write the checkpoint {models / 'bottle_state_e00002_b00000.pt'}" in line, line
        assert os.strerror(errno.ENOSPC) in line and " free on " in line
        assert f"the last checkpoint {state} " in line and "--resume" in line
        weights = torch.load(models / "bottle_model.pkl", weights_only=True)
        saved = torch.load(state, weights_only=True)["model"]  # the weights are the named state's
        assert weights.keys() == {f"model.{k}" for k in saved}
        assert all(torch.equal(weights[f"model.{k}"], v) for k, v in saved.items())
        _left_as_it_was(models, (models / "bottle_model.pkl").read_bytes(), state)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # room again
        out = train(data, disk, 2, "--resume", "--keep-last", "1")
        assert out.returncode == 0 and "[bottle] resuming at epoch 2" in out.stdout, out.stdout + out.stderr
        assert sorted(p.name for p in models.glob("bottle_state_*.pt")) == ["bottle_state_e00002_b00000.pt"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
