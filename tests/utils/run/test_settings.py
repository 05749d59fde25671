"""One answer to "which settings does this run use" (utils/run/settings.py): every command takes the
run's own image size and T from its meta, an explicit --img-size overrides the size and says so,
a T or network other than the run's is refused, and --eval-steps is checked against the run's T."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.helpers import TINY_FLAGS, cli, latest_prediction
from tests.fixtures.layouts import make_mvtec

# every test here drives the command line, a subprocess or a trained run
pytestmark = pytest.mark.slow

# A run trained at 64 px with T = 40: neither is the parser's default (256, 20), so a command that
# took the defaults instead of the run's would score at another size or refuse --eval-steps 30.
SIZE, T, K = 64, 40, 30


def _without(flags: list[str], *names: str) -> list[str]:
    """TINY_FLAGS less the flags ``names`` (each followed by one value)."""
    out, skip = [], False
    for f in flags:
        if skip:
            skip = False
        elif f in names:
            skip = True
        else:
            out.append(f)
    return out


# the tiny network and quiet options, without a size or T: each command must take the run's
FLAGS = _without(TINY_FLAGS, "--img-size", "--diffusion-num-steps")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    root = tmp_path_factory.mktemp("settings")
    data = make_mvtec(root / "data", n_train=4, n_test_good=2, defects=("crack",), n_per_defect=2, size=SIZE)
    logs = root / "logs"
    common = ["-r", "r", "--category", "bottle", "--log-path", str(logs), *FLAGS]
    cli("-c", "train", "-d", str(data), "--epoch-num", "1", "--img-size", str(SIZE), "--diffusion-num-steps", str(T),
        *common)
    return data, logs, common


def _scores(path: Path, key: str = "score") -> dict[str, float]:
    return {Path(r["image_path"]).name: float(r[key]) for r in csv.DictReader(path.open())}


def _detector_scores(logs: Path, files: list[Path], **kw) -> tuple[dict[str, float], object]:
    import transfusion

    det = transfusion.Detector.from_run(logs / "r", "bottle", device="cpu", eval_steps=K, **kw)
    result = det(files)
    return {Path(n).name: float(s) for n, s in zip(result.names, result.scores)}, det


def test_every_command_uses_the_runs_size_and_t_without_the_flags(run):
    """-c test, predict, calibrate and export on a 64 px, T = 40 run, with --eval-steps 30 and
    neither --img-size nor --diffusion-num-steps: all score as the run's detector scores (64 px,
    T = 40), which itself reads both from the meta."""
    data, logs, common = run
    good = sorted((data / "bottle" / "test" / "good").iterdir())
    expected, det = _detector_scores(logs, good)
    assert det.image_size == SIZE and det.process.num_steps == T and not det.notes

    out = cli("-c", "test", "-d", str(data), "--eval-steps", str(K), *common).stdout
    assert "trained at" not in out
    tested = _scores(logs / "r" / "results" / "bottle" / "per_image.csv")
    assert {n: tested[n] for n in expected} == pytest.approx(expected, abs=1e-7)  # 8 decimals in the CSV

    cli("-c", "predict", "--input", str(data / "bottle" / "test" / "good"), "--eval-steps", str(K), *common)
    lines = (latest_prediction(logs, "r", "bottle") / "predictions.jsonl").read_text().splitlines()
    predicted = {Path(r["path"]).name: r["score"] for r in map(json.loads, lines)}
    assert predicted == pytest.approx(expected, abs=1e-9)

    cli("-c", "calibrate", "--target-fpr", "0.5", "--calib-path", str(data / "bottle" / "test" / "good"),
        "--eval-steps", str(K), *common)
    calibrated = _scores(logs / "r" / "calibration" / "bottle" / "scores.csv")
    assert calibrated == pytest.approx(expected, abs=1e-6)  # scores.csv keeps 8 decimals

    pytest.importorskip("onnxruntime")
    cli("-c", "export", "--eval-steps", str(K), *common)
    side = json.loads((logs / "r" / "models" / "bottle_onnx.json").read_text())
    assert side["image_size"] == SIZE and side["diffusion_num_steps"] == T and len(side["steps"]) == K


def test_an_explicit_image_size_overrides_the_runs_and_says_so(run):
    data, logs, common = run
    good = sorted((data / "bottle" / "test" / "good").iterdir())
    expected, det = _detector_scores(logs, good, image_size=32)
    assert det.image_size == 32 and len(det.notes) == 1 and "trained at 64 px" in det.notes[0]
    assert det(good[0]).maps.shape == (1, 32, 32)
    r = cli("-c", "predict", "--input", str(good[0]), "--eval-steps", str(K), "--img-size", "32", *common)
    notes = [line for line in r.stdout.splitlines() if "trained at" in line]
    assert notes == [f"[bottle] note: trained at 64 px ({logs / 'r' / 'models' / 'bottle_meta.json'}); scoring at "
                     f"the --img-size 32 given"]
    lines = (latest_prediction(logs, "r", "bottle") / "predictions.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["score"] == pytest.approx(expected[good[0].name], abs=1e-6)  # batch of 1 vs 2
    # the same size given explicitly is no override: nothing is said
    same = cli("-c", "predict", "--input", str(good[0]), "--eval-steps", str(K), "--img-size", str(SIZE), *common)
    assert "trained at" not in same.stdout


@pytest.mark.parametrize("command", ["test", "predict", "calibrate", "export"])
def test_another_t_than_the_runs_is_refused_in_one_line(run, command):
    data, logs, common = run
    extra = {"test": ["-d", str(data)], "predict": ["--input", str(data / "bottle" / "test" / "good")],
             "calibrate": ["--target-fpr", "0.5", "--calib-path", str(data / "bottle" / "test" / "good")],
             "export": []}[command]
    r = cli("-c", command, *extra, "--diffusion-num-steps", "20", *common, check=False)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1
    assert err[0].startswith("error: --diffusion-num-steps 20: the run was trained with T = 40")


def test_eval_steps_beyond_the_runs_t_is_refused_against_that_t(run):
    data, logs, common = run
    r = cli("-c", "test", "-d", str(data), "--eval-steps", str(T - 1), *common, check=False)
    assert r.returncode == 2
    assert f"--eval-steps {T - 1}: the run was trained with T = {T}" in r.stderr and f"1..{T - 2}" in r.stderr


@pytest.mark.parametrize("flags, named", [(["--unet-channel-num", "64"], "--unet-channel-num"),
                                          (["--unet-n-blocks", "2"], "--unet-n-blocks")])
def test_another_network_than_the_runs_is_refused(run, flags, named):
    data, logs, common = run
    r = cli("-c", "test", "-d", str(data), *common, *flags, check=False)
    assert r.returncode == 2 and named in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_the_parser_tells_a_given_flag_from_its_default():
    from utils.Argparser import parse_args

    given = parse_args(["-c", "test", "-r", "x", "-d", "y", "--img-size", "256"]).given_flags
    assert "img_size" in given and "diffusion_num_steps" not in given and "mode" not in given
    assert parse_args(["-c", "demo"]).given_flags == {"choice"}  # the demo's recipe is defaults, not flags


def test_released_weights_without_a_meta_take_the_flags(run, tmp_path):
    """A released checkpoint has no meta: the command line's size and T apply, as in the original."""
    from models.checkpoint import load_network_file
    from utils.run.paths import RunPaths
    from utils.run.settings import Requested, run_settings

    _, logs, _ = run
    released = RunPaths(tmp_path, "released")
    released.models.mkdir(parents=True)
    (released.weights("bottle")).write_bytes((logs / "r" / "models" / "bottle_model.pkl").read_bytes())
    cfg = load_network_file(released.weights("bottle")).cfg
    default = run_settings(released, "bottle", cfg, Requested())
    assert (default.image_size, default.num_steps, default.notes) == (256, 20, ())
    asked = run_settings(released, "bottle", cfg, Requested(image_size=64, num_steps=40, eval_steps=K))
    assert (asked.image_size, asked.num_steps, asked.notes) == (64, 40, ())
    assert len(asked.process.schedule(K)) == K
    assert asked.process.beta.numpy() == pytest.approx(np.linspace(0, 1, 40), abs=1e-7)
