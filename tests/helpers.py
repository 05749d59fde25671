"""What many test modules share: one tiny network configuration, a command-line runner, a tiny
trained-and-tested run and the original's reference tensors.

Not tests. The tiny configuration is defined once, as a dict of UNetConfig fields, and the
command-line flags that build the same network are derived from it, so the two cannot drift.
"""
from __future__ import annotations

import contextlib
import io
import lzma
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A 2-level 32-channel UNet at 32 px with 5 diffusion steps: seconds per epoch on a CPU.
TINY_NET = dict(n_channels=32, ch_mults=(1, 2), attn=(False, True), group_conv=(True, True), n_blocks=1)
TINY_STEPS = 5
TINY_SIZE = 32


def _flag_list(values: tuple) -> list[str]:
    return [("T" if v else "F") if isinstance(v, bool) else str(v) for v in values]


# The same network as TINY_NET, as command-line flags, plus what keeps a CLI run small and quiet.
TINY_FLAGS: list[str] = [
    "--img-size", str(TINY_SIZE), "--unet-channel-num", str(TINY_NET["n_channels"]),
    "--unet-ch-mults", *_flag_list(TINY_NET["ch_mults"]), "--unet-attn", *_flag_list(TINY_NET["attn"]),
    "--unet-group-conv", *_flag_list(TINY_NET["group_conv"]), "--unet-n-blocks", str(TINY_NET["n_blocks"]),
    "--diffusion-num-steps", str(TINY_STEPS), "--bs", "4", "--workers", "0", "--lr", "1e-3",
    "--eval-epoch-num", "0", "--quiet", "--no-fg-masks", "--device", "cpu",
]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def cli(*argv: str, check: bool = True) -> CliResult:
    """``Experiment.main(argv)`` in this process, its output captured: no interpreter start-up.

    Use :func:`cli_subprocess` where process-wide state matters (signals, the allocator,
    OMP_WAIT_POLICY, which Experiment.py sets before torch is imported).
    """
    import Experiment

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = Experiment.main(list(argv))
        except SystemExit as exc:  # argparse errors
            rc = exc.code if isinstance(exc.code, int) else 2
    result = CliResult(rc, out.getvalue(), err.getvalue())
    if check and rc != 0:
        raise AssertionError(f"exit {rc}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def cli_subprocess(*argv: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """``python Experiment.py argv`` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, str(REPO / "Experiment.py"), *argv], cwd=kwargs.pop("cwd", REPO),
                          capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def tiny_tested_run(root: Path, run: str, size: int, mode: str = "rgb",
                    width: str | None = None) -> tuple[Path, Path, list[str]]:
    """A tiny run trained for one epoch and tested (its F1-max threshold and depth range stored)
    under ``root``: bottle of an MVTec-layout dataset in rgb mode, tire of an MVTec 3D-AD-layout
    one in the depth modes, ``size`` px. Returns (data root, log path, the flags naming the run)."""
    from tests.layouts import make_mvtec, make_mvtec3d

    if mode == "rgb":
        data = make_mvtec(root / "data", n_train=4, n_test_good=2, defects=("crack",), n_per_defect=2, size=size)
        common = ["-r", run, "--category", "bottle"]
    else:
        data = make_mvtec3d(root / "data", n_train=2, n_val=0, n_test_good=1, n_per_defect=1, size=size)
        common = ["-r", run, "-ds", "mvtec3d", "--mode", mode, "--category", "tire"]
    logs = root / "logs"
    common += ["--log-path", str(logs), *TINY_FLAGS, *(["--unet-channel-num", width] if width else [])]
    cli("-c", "train", "-d", str(data), "--epoch-num", "1", *common)
    cli("-c", "test", "-d", str(data), *common)
    return data, logs, common


def load_reference(shared_dir: Path) -> dict:
    """The original's reference tensors (``reference/reference_rgb.pt.xz``), with ``state_dict``
    decoded from its integer codes times powers of two; skips the test when the file is absent."""
    import pytest
    import torch

    path = shared_dir / "reference" / "reference_rgb.pt.xz"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    data = torch.load(io.BytesIO(lzma.open(path).read()), weights_only=True)
    exp2 = data["state_dict_exp2"]
    data["state_dict"] = {k: (c.float() * 2.0 ** exp2[k]) if k in exp2 else c
                          for k, c in data["state_dict_codes"].items()}
    return data
