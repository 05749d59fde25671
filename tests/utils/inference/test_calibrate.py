"""Calibration on good images (issue: thresholds calibrated on good parts): the binomial rule as the
issue states it, checked on many synthetic draws against the false-alarm rate it promises; the
too-few-images path; -c train --holdout, -c calibrate and -c predict applying the threshold."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.helpers import TINY_FLAGS, cli, latest_prediction
from tests.fixtures.layouts import make_mvtec, make_mvtec3d
from utils.inference.calibration_rule import calibrate_threshold

# every test here drives the command line, a subprocess or a trained run
pytestmark = pytest.mark.slow


def binomial_tail(n: int, a: float, r: int) -> float:
    """P(Binomial(n, a) >= r), summed term by term (independent of scipy)."""
    return sum(math.comb(n, k) * a ** k * (1 - a) ** (n - k) for k in range(r, n + 1))


def largest_r(n: int, a: float, g: float) -> int | None:
    """The largest r with P(Binomial(n, a) >= r) >= g, by the issue's definition (None: not even 1)."""
    passing = [r for r in range(1, n + 1) if binomial_tail(n, a, r) >= g]
    return max(passing) if passing else None


@pytest.mark.parametrize("n,a,g", [(60, 0.05, 0.95), (400, 0.05, 0.95), (1000, 0.01, 0.9), (299, 0.01, 0.95),
                                   (150, 0.1, 0.99)])
def test_the_threshold_is_the_r_th_largest_score_for_the_largest_passing_r(n, a, g):
    scores = np.random.default_rng(n).normal(size=n)
    cal = calibrate_threshold(scores, a, g)
    r = largest_r(n, a, g)
    assert cal.enough and cal.r == r
    assert cal.threshold == sorted(scores, reverse=True)[r - 1]
    assert cal.confidence_reached == pytest.approx(binomial_tail(n, a, r), rel=1e-9)
    assert (cal.n, cal.target_fpr, cal.confidence) == (n, a, g)


def _share_over(thresholds: np.ndarray, false_alarm_rate, a: float) -> float:
    return float(np.mean(false_alarm_rate(thresholds) > a))


@pytest.mark.parametrize("n,a,g,dist", [(60, 0.05, 0.95, "uniform"), (400, 0.05, 0.95, "exponential"),
                                        (120, 0.02, 0.9, "uniform")])
def test_on_2000_draws_the_false_alarm_rate_exceeds_a_at_most_one_minus_g_of_the_time(n, a, g, dist):
    """2000 draws of n good scores from a known distribution, so each threshold's true false-alarm
    rate P(S > threshold) is exact: the share of draws above A is at most 1 − G plus sampling noise,
    and it is what the binomial says, 1 − P(Binomial(n, A) >= r) (the rule is not needlessly strict)."""
    draws = 2000
    rng = np.random.default_rng(7)
    if dist == "uniform":
        scores, far = rng.random((draws, n)), (lambda t: 1.0 - t)
    else:
        scores, far = rng.exponential(size=(draws, n)), (lambda t: np.exp(-t))
    thresholds = np.array([calibrate_threshold(s, a, g).threshold for s in scores])
    share = _share_over(thresholds, far, a)
    r = largest_r(n, a, g)
    expected = 1 - binomial_tail(n, a, r)
    noise = 3 * math.sqrt((1 - g) * g / draws)
    assert expected <= 1 - g
    assert share <= (1 - g) + noise
    assert abs(share - expected) <= noise


def test_ties_keep_the_guarantee_with_the_strict_rule():
    """Scores on a few levels: decisions are score > threshold, so a tie at the threshold is OK, and
    the false-alarm rate P(S > threshold) still stays at most A in all but about 1 − G of draws."""
    levels = np.arange(10)
    p = np.array([0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.04, 0.03, 0.02, 0.01])
    above = {int(v): float(p[levels > v].sum()) for v in levels}  # P(S > v)
    rng = np.random.default_rng(3)
    a, g, n = 0.05, 0.95, 80
    thresholds = [calibrate_threshold(rng.choice(levels, size=n, p=p), a, g).threshold for _ in range(2000)]
    share = float(np.mean([above[int(t)] > a for t in thresholds]))
    assert share <= (1 - g) + 3 * math.sqrt(0.05 * 0.95 / 2000)


def test_too_few_images_store_the_largest_score_and_say_what_they_reach():
    """n < ln(1 − G) / ln(1 − A): for A = 1 %, G = 95 % that is n < 299 (the issue's example)."""
    scores = np.linspace(0.1, 0.7, 10)
    cal = calibrate_threshold(scores, 0.01, 0.95)
    assert not cal.enough and cal.r == 1 and cal.threshold == pytest.approx(0.7)
    assert cal.confidence_reached == pytest.approx(1 - 0.99 ** 10, rel=1e-9)
    assert cal.images_needed == 299 == math.ceil(math.log(1 - 0.95) / math.log(1 - 0.01))
    assert not calibrate_threshold(np.arange(298.0), 0.01, 0.95).enough
    enough = calibrate_threshold(np.arange(299.0), 0.01, 0.95)
    assert enough.enough and enough.r == 1 and enough.threshold == 298.0


# ----------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def held_out_run(tmp_path_factory):
    data = make_mvtec(tmp_path_factory.mktemp("data"), n_train=10, n_test_good=2, defects=("crack",),
                      n_per_defect=2, size=32)
    logs = tmp_path_factory.mktemp("logs")
    out = cli("-c", "train", "-r", "h", "-d", str(data), "--category", "bottle", "--log-path", str(logs),
              "--epoch-num", "1", "--holdout", "4", *TINY_FLAGS).stdout
    return data, logs, out


def _meta(logs: Path, run: str = "h") -> dict:
    return json.loads((logs / run / "models" / "bottle_meta.json").read_text())


def test_holdout_leaves_evenly_spaced_images_out_of_training_and_records_them(held_out_run):
    data, logs, out = held_out_run
    names = sorted(p.name for p in (data / "bottle" / "train" / "good").glob("*.png"))
    # K = 4 of n = 10, evenly spaced: image floor((2i + 1)·n / 2K), i = 0..3 -> 1, 3, 6, 8
    expected = [names[(2 * i + 1) * 10 // 8] for i in range(4)]
    holdout = _meta(logs)["holdout"]
    assert holdout["files"] == expected == ["001.png", "003.png", "006.png", "008.png"]
    assert holdout["count"] == 4 and holdout["of"] == 10
    assert "holding out 4 of 10 training images" in out

    from utils.Argparser import parse_args
    from utils.run.paths import RunPaths
    from utils.training.feed import training_data

    args = parse_args(["-c", "train", "-r", "h2", "-d", str(data), "--category", "bottle", "--log-path",
                       str(logs), "--holdout", "4", *TINY_FLAGS])
    trained_on = {p.name for p in training_data(args, "bottle", RunPaths(logs, "h2")).train_set.paths}
    assert trained_on == set(names) - set(expected)
    args.holdout = None  # without --holdout: every image, and no record in the meta
    assert {p.name for p in training_data(args, "bottle", RunPaths(logs, "h2")).train_set.paths} == set(names)


def test_holdout_must_leave_an_image_and_resume_must_keep_it(held_out_run, tmp_path):
    data, logs, _ = held_out_run
    r = cli("-c", "train", "-r", "x", "-d", str(data), "--category", "bottle", "--log-path", str(tmp_path),
            "--epoch-num", "1", "--holdout", "10", *TINY_FLAGS, check=False)
    assert r.returncode == 2 and "--holdout 10" in r.stderr and "9 at most" in r.stderr
    r = cli("-c", "train", "-r", "h", "-d", str(data), "--category", "bottle", "--log-path", str(logs),
            "--epoch-num", "2", "--resume", *TINY_FLAGS, check=False)
    assert r.returncode == 2 and "--holdout 4" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_calibrate_on_held_out_images_stores_the_rule_and_predict_applies_it(held_out_run):
    data, logs, _ = held_out_run
    common = ["-r", "h", "--category", "bottle", "--log-path", str(logs), *TINY_FLAGS]
    out = cli("-c", "calibrate", *common, "--target-fpr", "30%", "--confidence", "0.5").stdout
    cal = _meta(logs)["calibration"]
    rows = list(csv.DictReader((logs / "h" / "calibration" / "bottle" / "scores.csv").open()))
    assert sorted(Path(r["image_path"]).name for r in rows) == _meta(logs)["holdout"]["files"]
    scores = sorted((float(r["score"]) for r in rows), reverse=True)
    # n = 4, A = 0.3, G = 0.5: P(Bin(4, 0.3) >= 1) = 0.76, >= 2: 0.35 -> r = 1
    assert (cal["n"], cal["r"], cal["target_fpr"], cal["confidence"]) == (4, 1, 0.3, 0.5) == \
        (4, largest_r(4, 0.3, 0.5), 0.3, 0.5)
    assert cal["threshold"] == pytest.approx(scores[0], abs=1e-8)
    assert cal["schedule"] == {"eval_steps": None, "early_stop": None} and cal["enough"]
    assert "the 1-th largest score" in out and "at most 30 %" in out

    images = data / "bottle" / "train" / "good"
    out = cli("-c", "predict", *common, "--input", str(images)).stdout
    assert "decisions: calibrated threshold" in out and str(logs / "h" / "models" / "bottle_meta.json") in out
    recs = [json.loads(x) for x in (latest_prediction(logs, "h", "bottle") / "predictions.jsonl").read_text().split("\n")
            if x]
    assert len(recs) == 10 and all(r["threshold_kind"] == "calibrated" for r in recs)
    for r in recs:  # defect exactly when score > threshold
        assert r["decision"] == ("defect" if r["score"] > cal["threshold"] else "OK")
    held = {Path(r["image_path"]).name: float(r["score"]) for r in rows}
    for r in recs:  # the same scores as calibration saw (batches differ: within float noise)
        if Path(r["path"]).name in held:
            assert r["score"] == pytest.approx(held[Path(r["path"]).name], abs=1e-6)

    # an explicit --threshold wins, with the >= rule
    middle = sorted(r["score"] for r in recs)[5]
    out = cli("-c", "predict", *common, "--input", str(images), "--threshold", repr(middle)).stdout
    assert "decisions: --threshold threshold" in out
    recs = [json.loads(x) for x in (latest_prediction(logs, "h", "bottle") / "predictions.jsonl").read_text().split("\n")
            if x]
    assert all(r["decision"] == ("defect" if r["score"] >= middle else "OK") for r in recs)
    assert sum(r["decision"] == "defect" for r in recs) == 5


def test_calibrate_says_what_too_few_images_reach(held_out_run):
    _, logs, _ = held_out_run
    out = cli("-c", "calibrate", "-r", "h", "--category", "bottle", "--log-path", str(logs), "--target-fpr", "0.01",
              *TINY_FLAGS).stdout
    cal = _meta(logs)["calibration"]
    assert not cal["enough"] and cal["r"] == 1 and cal["images_needed"] == 299
    reached = 100 * (1 - 0.99 ** 4)
    assert cal["confidence_reached"] == pytest.approx(reached / 100)
    assert "too few" in out and f"{reached:.1f} % confidence" in out and "299 good images" in out
    assert "295 more good images" in out


def test_calibrate_takes_the_validation_split_or_a_folder_and_otherwise_says_what_to_provide(tmp_path):
    data = make_mvtec3d(tmp_path / "data", n_train=3, n_val=3, with_xyz=False, size=32)
    logs = tmp_path / "logs"
    common = ["-ds", "mvtec3d", "--mode", "rgb", "--category", "tire", "--log-path", str(logs), *TINY_FLAGS]
    cli("-c", "train", "-r", "v", "-d", str(data), "--epoch-num", "1", *common)
    none = cli("-c", "calibrate", "-r", "v", "--target-fpr", "0.1", *common, check=False)
    assert none.returncode == 2 and len(none.stderr.strip().splitlines()) == 1
    assert all(s in none.stderr for s in ("--calib-path", "validation/good", "--holdout"))
    out = cli("-c", "calibrate", "-r", "v", "-d", str(data), "--target-fpr", "0.1", *common).stdout
    assert "validation" in out and json.loads((logs / "v" / "models" / "tire_meta.json").read_text())[
        "calibration"]["n"] == 3
    folder = data / "tire" / "validation" / "good"  # an MVTec 3D-AD style folder: its rgb/ images
    cli("-c", "calibrate", "-r", "v", "--calib-path", str(folder), "--target-fpr", "0.2", *common)
    cal = json.loads((logs / "v" / "models" / "tire_meta.json").read_text())["calibration"]
    assert cal["n"] == 3 and cal["target_fpr"] == 0.2 and cal["images_from"] == f"--calib-path {folder}"


@pytest.mark.parametrize("argv,needle", [
    (["-c", "calibrate", "-r", "x"], "--target-fpr"),
    (["-c", "calibrate", "-r", "x", "--target-fpr", "5"], "--target-fpr"),
    (["-c", "calibrate", "-r", "x", "--target-fpr", "0.05", "--confidence", "1"], "--confidence"),
    (["-c", "predict", "-r", "x", "--input", ".", "--target-fpr", "0.05"], "goes with -c calibrate"),
    (["-c", "test", "-r", "x", "-d", ".", "--holdout", "3"], "--holdout goes with -c train"),
    (["-c", "train", "-r", "x", "-d", ".", "--holdout", "0"], "--holdout must be at least 1"),
])
def test_calibration_flags_are_checked_at_the_door(argv, needle, tmp_path):
    r = cli(*argv, "--log-path", str(tmp_path), check=False)
    assert r.returncode == 2 and needle in r.stderr and not any(tmp_path.iterdir())


def test_test_decides_with_the_calibrated_threshold_and_predict_notes_another_schedule(held_out_run):
    data, logs, _ = held_out_run
    common = ["-r", "h", "--category", "bottle", "--log-path", str(logs), *TINY_FLAGS]
    cli("-c", "calibrate", *common, "--target-fpr", "0.5")
    cal = _meta(logs)["calibration"]
    cli("-c", "test", "-d", str(data), *common)
    results = logs / "h" / "results" / "bottle"
    summary = json.loads((results / "summary.json").read_text())
    assert summary["decision_threshold"]["kind"] == "calibrated"
    assert summary["decision_threshold"]["value"] == cal["threshold"]
    assert [t["kind"] for t in summary["thresholds"]] == ["calibrated", "F1-max"]
    for r in csv.DictReader((results / "per_image.csv").open()):
        assert r["decision"] == ("defect" if float(r["score"]) > cal["threshold"] + 5e-9 else "OK") or \
            abs(float(r["score"]) - cal["threshold"]) < 5e-9
    out = cli("-c", "predict", *common, "--eval-steps", "2", "--input", str(data / "bottle" / "test" / "good")).stdout
    assert "the stored threshold was made with the step schedule" in out and "(calibrated)" in out
