"""Every value range is checked by the parser, before anything is created (issue 16, item 3).

Each bad value must end the command with exit status 2 and one line naming the flag, and leave
no run folder behind: before these checks, --img-size 0 or -32, --diffusion-num-steps 1|2,
--lr nan and --workers -1 ended in tracebacks after the run folder was made, and --eval-w 2
ran and rewrote the results and the F1 threshold that -c predict uses.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.helpers import cli
from utils.Argparser import parse_args

BAD_VALUES = [
    (["--img-size", "0"], "--img-size"),
    (["--img-size", "-32"], "--img-size"),
    (["--img-size", "48"], "--img-size"),
    (["--diffusion-num-steps", "1"], "--diffusion-num-steps"),
    (["--diffusion-num-steps", "2"], "--diffusion-num-steps"),
    (["--diffusion-num-steps", "0"], "--diffusion-num-steps"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--lr", "-1e-4"], "--lr"),
    (["--eval-w", "2"], "--eval-w"),
    (["--eval-w", "-0.5"], "--eval-w"),
    (["--eval-w", "nan"], "--eval-w"),
    (["--workers", "-1"], "--workers"),
    (["--gamma", "0"], "--gamma"),
    (["--gamma", "nan"], "--gamma"),
    (["--gamma", "2"], "--gamma"),
    (["--step-size", "0"], "--step-size"),
    (["--keep-last", "0"], "--keep-last"),
    (["--eval-bs", "0"], "--eval-bs"),
    (["--epoch-num", "0"], "--epoch-num"),
    (["--seed", "-1"], "--seed"),
    (["--unet-n-blocks", "0"], "--unet-n-blocks"),
    (["--unet-channel-num", "0"], "--unet-channel-num"),
    (["--unet-channel-num", "48"], "--unet-channel-num"),  # level widths must be multiples of 32
    # list flags: one value per level, the number of levels being the length of --unet-ch-mults (4)
    (["--unet-attn", "F", "T"], "--unet-attn"),
    (["--unet-group-conv", "T", "T", "T", "T", "T"], "--unet-group-conv"),
    (["--unet-ch-mults", "1", "2"], "--unet-attn"),
    (["--unet-ch-mults", "1", "0", "2", "2"], "--unet-ch-mults"),
    # the flags of the step-schedule issue and --preview-synthesis, checked the same way
    (["--eval-steps", "0"], "--eval-steps"),
    (["--eval-steps", "19"], "--eval-steps"),
    (["--early-stop", "0"], "--early-stop"),
    (["--preview-synthesis", "0"], "--preview-synthesis"),
    (["--resume", "--overwrite"], "--overwrite"),
]


def _assert_refused(result, flag: str, logs: Path) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not logs.exists(), "the run folder was created before the value was refused"


@pytest.mark.parametrize("flags,flag", BAD_VALUES, ids=[" ".join(f) for f, _ in BAD_VALUES])
def test_a_bad_value_is_refused_at_the_door(flags, flag, tmp_path):
    logs = tmp_path / "logs"
    result = cli("-c", "train", "-r", "x", "-d", str(tmp_path), "--log-path", str(logs), *flags, check=False)
    _assert_refused(result, flag, logs)


def test_eval_w_out_of_range_does_not_reach_test(tmp_path):
    """The issue's case: -c test --eval-w 2 ran and rewrote results/, output.csv and the threshold."""
    logs = tmp_path / "logs"
    result = cli("-c", "test", "-r", "x", "-d", str(tmp_path), "--log-path", str(logs), "--eval-w", "2",
                 check=False)
    _assert_refused(result, "--eval-w", logs)


def test_overwrite_goes_with_train_only(tmp_path):
    logs = tmp_path / "logs"
    result = cli("-c", "test", "-r", "x", "-d", str(tmp_path), "--log-path", str(logs), "--overwrite", check=False)
    _assert_refused(result, "--overwrite", logs)


def test_argparse_own_errors_are_one_line_too(tmp_path):
    result = cli("-c", "train", "-r", "x", "-d", str(tmp_path), "--lr", "fast", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "--lr" in lines[0], result.stderr


@pytest.mark.parametrize("flags", [
    ["--img-size", "32"], ["--diffusion-num-steps", "3"], ["--eval-w", "0"], ["--eval-w", "1"],
    ["--workers", "0"], ["--gamma", "1"], ["--seed", "0"], ["--eval-epoch-num", "0"],
    ["--unet-ch-mults", "1", "2", "2", "--unet-attn", "F", "F", "T", "--unet-group-conv", "T", "T", "T"],
])
def test_edge_values_that_make_sense_pass(flags):
    args = parse_args(["-c", "train", "-r", "x", "-d", "x", *flags])
    assert args.choice == "train"


def test_the_demo_recipe_passes_its_own_checks():
    args = parse_args(["-c", "demo"])
    assert len(args.unet_attn) == len(args.unet_ch_mults) == len(args.unet_group_conv)
