"""A run folder from a stranger (issue 26, items 1 and 2): every command that reads a category's meta
refuses a damaged one with one line naming the file, the key, what was expected and the fix, never
a traceback; a NaN threshold is refused, not used to call every image OK.

The cases are the issue's own, each through -c predict, -c calibrate, -c export, -c test and
`transfusion.Detector.from_run`. The refusal comes before the network is loaded, so each costs
milliseconds; the run itself (tests/utils/run/conftest.py) is built once.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest

import transfusion
from tests.fixtures.helpers import cli
from utils.core.errors import TransFusionError


def base(logs: Path) -> list[str]:
    return ["-r", "r", "--category", "bottle", "--log-path", str(logs), "--device", "cpu", "--quiet"]


def commands(data: Path, logs: Path) -> dict[str, Callable[[], tuple[int, str]]]:
    """Each command that reads the meta, as (exit status, stderr); the API's refusal as status 2."""
    good = str(data / "bottle" / "test" / "good")

    def run(*argv: str) -> Callable[[], tuple[int, str]]:
        def go() -> tuple[int, str]:
            r = cli(*argv, *base(logs), check=False)
            return r.returncode, r.stderr
        return go

    def api() -> tuple[int, str]:
        try:
            transfusion.Detector.from_run(logs / "r", "bottle", device="cpu")
        except TransFusionError as exc:
            return 2, f"error: {exc}\n"
        return 0, ""

    return {"predict": run("-c", "predict", "--input", good),
            "calibrate": run("-c", "calibrate", "--target-fpr", "0.5", "--calib-path", good),
            "export": run("-c", "export"), "test": run("-c", "test", "-d", str(data)), "Detector": api}


def one_line_refusal(rc: int, stderr: str, *expected: str) -> str:
    lines = stderr.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for part in expected:
        assert part in lines[0], lines[0]
    return lines[0]


def _with(key: str, value: Any) -> Callable[[dict], str]:
    return lambda meta: json.dumps({**meta, key: value})


def _calibration(change: Callable[[dict], None]) -> Callable[[dict], str]:
    def damaged(meta: dict) -> str:
        cal = dict(meta["calibration"])
        change(cal)
        return json.dumps({**meta, "calibration": cal})
    return damaged


# The issue's list: (the damaged meta's text from the good one, what the one line must say)
ISSUE_CASES: dict[str, tuple[Callable[[dict], str], tuple[str, ...]]] = {
    "img_size 1e12": (_with("img_size", 1e12), ('"img_size" is 1000000000000.0', "multiple of 32")),
    "img_size abc": (_with("img_size", "abc"), ('"img_size" is "abc"',)),
    "img_size -32": (_with("img_size", -32), ('"img_size" is -32',)),
    "T 1e15": (_with("diffusion_num_steps", 1e15), ('"diffusion_num_steps"', "3..1000")),
    "T -5": (_with("diffusion_num_steps", -5), ('"diffusion_num_steps" is -5', "3..1000")),
    "a top-level list": (lambda meta: json.dumps([meta]), ("holds an array", "not the JSON object")),
    "an array nested 100,000 deep": (lambda meta: "[" * 100_000 + "]" * 100_000, ("nested more than",)),
    "threshold abc": (_calibration(lambda c: c.update(threshold="abc")), ('"calibration" > "threshold" is "abc"',)),
    "threshold [1]": (_calibration(lambda c: c.update(threshold=[1])), ('"calibration" > "threshold" is [1]',)),
    "target_fpr x": (_calibration(lambda c: c.update(target_fpr="x")), ('"calibration" > "target_fpr" is "x"',)),
    "no target_fpr": (_calibration(lambda c: c.pop("target_fpr")), ('"calibration"', "missing: target_fpr")),
}


@pytest.mark.parametrize("case", ISSUE_CASES)
def test_a_damaged_meta_is_one_line_for_every_command_that_reads_it(run_copy, case):
    data, logs = run_copy
    meta_path = logs / "r" / "models" / "bottle_meta.json"
    meta = json.loads(meta_path.read_text())
    damage, expected = ISSUE_CASES[case]
    meta_path.write_text(damage(meta))
    for name, command in commands(data, logs).items():
        line = one_line_refusal(*command(), str(meta_path), *expected)
        assert "delete" in line, (name, line)  # the fix: which key, or the file
    assert not (logs / "r" / "models" / "bottle.onnx").exists()  # -c export wrote nothing
    assert not list((logs / "r" / "predictions" / "bottle").glob("*/predictions.jsonl"))  # predict neither


@pytest.mark.parametrize("key, where", [("calibration", '"calibration" > "threshold" is NaN'),
                                        ("f1_threshold", '"f1_threshold" is NaN')])
def test_a_nan_threshold_is_refused_not_used(run_copy, key, where):
    """NaN compares false with every score, so it called every image OK, silently (item 2)."""
    data, logs = run_copy
    meta_path = logs / "r" / "models" / "bottle_meta.json"
    meta = json.loads(meta_path.read_text())
    if key == "calibration":
        meta["calibration"]["threshold"] = float("nan")
    else:
        del meta["calibration"]  # then the F1-max threshold decides
        meta["f1_threshold"] = float("nan")
    meta_path.write_text(json.dumps(meta))  # json writes NaN as the bare word NaN
    assert "NaN" in meta_path.read_text()
    for command in commands(data, logs).values():
        one_line_refusal(*command(), str(meta_path), where, "delete the key")


def test_the_undamaged_run_is_read_as_its_writers_wrote_it(run_copy):
    """The control: the same run, undamaged, decides with its calibrated threshold; without the
    calibration record, with -c test's F1-max one (the precedence of utils/run/thresholds.py)."""
    data, logs = run_copy
    meta_path = logs / "r" / "models" / "bottle_meta.json"
    meta = json.loads(meta_path.read_text())
    det = transfusion.Detector.from_run(logs / "r", "bottle", device="cpu")
    assert det.image_size == meta["img_size"] == 32 and det.process.num_steps == meta["diffusion_num_steps"] == 5
    assert det.threshold.kind == "calibrated" and det.threshold.value == meta["calibration"]["threshold"]
    del meta["calibration"]
    meta_path.write_text(json.dumps(meta))
    det = transfusion.Detector.from_run(logs / "r", "bottle", device="cpu")
    assert det.threshold.kind == "F1-max" and det.threshold.value == meta["f1_threshold"]
    out = cli("-c", "predict", "--input", str(data / "bottle" / "test" / "good"), *base(logs)).stdout
    assert "decisions: F1-max threshold" in out


def test_held_out_names_that_leave_their_folder_are_refused(run_copy):
    """-c calibrate reads the held-out images by the names the meta records: a name with a folder
    part ("../x.png") would read outside the training folder."""
    data, logs = run_copy
    meta_path = logs / "r" / "models" / "bottle_meta.json"
    meta = json.loads(meta_path.read_text())
    meta["holdout"] = {"count": 1, "of": 4, "files": ["../../../etc/passwd"], "folder": str(data)}
    meta_path.write_text(json.dumps(meta))
    rc, err = commands(data, logs)["calibrate"]()
    one_line_refusal(rc, err, str(meta_path), '"holdout" > "files"', "without folders")
