"""One network for every category (docs/method.md §10): -c train_multiclass and -c test_multiclass
as the original's later code runs them, and everything else of the project on such a run."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.helpers import REPO, SHARED, TINY_FLAGS, cli, latest_prediction
from tests.fixtures.layouts import make_mvtec

# every test here drives the command line or a trained run
pytestmark = pytest.mark.slow

SECOND = "carpet"  # a texture category: the multi-class recipe gives it foreground masks too
AVG_LINE = re.compile(r"^AVG AUROC: (\d+\.\d\d), AVG AUPRO: (\d+\.\d\d), AVG AUROC PIX: (\d+\.\d\d), "
                      r"AVG AP PIX: (\d+\.\d\d)$")


def _union(root: Path, real_bottle: bool) -> Path:
    """bottle (the real slice of ../shared when asked and present) and a second MVTec-layout category."""
    data = root / "data"
    slice_ = SHARED / "data" / "mvtec_ad" / "bottle"
    if real_bottle:
        if not slice_.is_dir():
            pytest.skip(f"{slice_} is absent (the real bottle slice)")
        shutil.copytree(slice_, data / "bottle", ignore=shutil.ignore_patterns("*.txt"))
    else:
        make_mvtec(data, "bottle", n_train=4, n_test_good=2, defects=("crack",), n_per_defect=2, size=48)
    make_mvtec(data, SECOND, n_train=4, n_test_good=2, defects=("hole",), n_per_defect=2, size=48)
    return data


@pytest.fixture(scope="module")
def union(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """The real bottle slice + carpet, one network trained for 1 epoch with 1 image per category held
    out (for -c calibrate), and its flags."""
    root = tmp_path_factory.mktemp("mc")
    data = _union(root, real_bottle=True)
    logs = root / "logs"
    common = ["-r", "mc", "--log-path", str(logs), *TINY_FLAGS]
    cli("-c", "train_multiclass", "-d", str(data), "--epoch-num", "1", "--holdout", "1", *common)
    return data, logs, common


def _output_rows(logs: Path, run: str) -> list[dict[str, str]]:
    return list(csv.DictReader((logs / run / "output.csv").open()))


def test_train_then_test_multiclass_one_network_rows_average_and_the_original_line(union):
    data, logs, common = union
    models = logs / "mc" / "models"
    assert sorted(p.name for p in models.glob("*_model.pkl")) == ["*_model.pkl"]  # the original's literal name
    sd = torch.load(models / "*_model.pkl", weights_only=True)
    assert all(k.startswith("model.") for k in sd)  # the released format
    meta = json.loads((models / "multiclass_meta.json").read_text())
    assert meta["categories"] == ["bottle", SECOND]
    # no texture rule: carpet's anomalies are placed by a foreground mask too (TINY_FLAGS has --no-fg-masks)
    assert meta["per_category"][SECOND]["fg_masks"]["why"] == "--no-fg-masks"
    out = cli("-c", "test_multiclass", "-d", str(data), *common).stdout.strip().splitlines()
    summaries = {c: json.loads((logs / "mc" / "results" / "multiclass" / c / "summary.json").read_text())["metrics"]
                 for c in ("bottle", SECOND)}
    means = [100 * np.mean([summaries[c][k] for c in summaries])
             for k in ("image_auroc", "aupro", "pixel_auroc", "pixel_ap")]
    m = AVG_LINE.match(out[-1])
    assert m, out[-1]
    assert [float(v) for v in m.groups()] == pytest.approx(means, abs=0.005 + 1e-9)
    rows = [r for r in _output_rows(logs, "mc") if r["network"] == "multiclass"]
    assert [r["category"] for r in rows] == ["bottle", SECOND, "Average"]
    assert float(rows[2]["image_auroc"]) == pytest.approx(means[0], abs=0.005 + 1e-9)
    # the published multi-class figures beside ours: bottle 99.84 / 96.35, Δ = ours − published
    bottle_row = next(line for line in out if line.startswith("| bottle |")).split("|")
    cells = [c.strip() for c in bottle_row[1:-1]]
    assert cells[2] == "99.84" and cells[5] == "96.35"
    assert float(cells[3]) == pytest.approx(float(cells[1]) - 99.84, abs=0.011)
    assert any("published multi-class run on its 15" in line for line in out)  # the union differs


def test_a_released_layout_checkpoint_placed_as_the_multiclass_weights_is_tested_without_training(union, tmp_path):
    data, logs, common = union
    fresh = tmp_path / "logs" / "released" / "models"
    fresh.mkdir(parents=True)
    shutil.copy2(logs / "mc" / "models" / "*_model.pkl", fresh / "*_model.pkl")  # weights alone, no meta
    flags = ["-r", "released", "--log-path", str(tmp_path / "logs"), *TINY_FLAGS]
    out = cli("-c", "test_multiclass", "-d", str(data), "--category", f"bottle,{SECOND}", *flags).stdout
    assert AVG_LINE.match(out.strip().splitlines()[-1])
    ours = {c: _scores(logs / "mc" / "results" / "multiclass" / c) for c in ("bottle", SECOND)}
    theirs = {c: _scores(tmp_path / "logs" / "released" / "results" / "multiclass" / c) for c in ("bottle", SECOND)}
    assert theirs == ours  # the same network, the flags giving the size and T a meta would have given


def _scores(results: Path) -> dict[str, str]:
    return {r["image_path"]: r["score"] for r in csv.DictReader((results / "per_image.csv").open())}


def test_c_test_on_a_multiclass_run_says_to_use_test_multiclass(union):
    data, logs, common = union
    r = cli("-c", "test", "-d", str(data), *common, check=False)
    assert r.returncode == 2 and "test it with -c test_multiclass" in r.stderr


def test_visualize_and_one_report_page_per_category_plus_the_index(union):
    data, logs, common = union
    cli("-c", "test_multiclass", "-d", str(data), "--visualize", *common)
    results = logs / "mc" / "results" / "multiclass"
    for cat in ("bottle", SECOND):
        n_test = len(list(csv.DictReader((results / cat / "per_image.csv").open())))
        assert len(list((results / cat / "visualizations").glob("*.png"))) == n_test
        assert (results / cat / "report.html").is_file()
    index = (results / "index.html").read_text()
    assert 'href="bottle/report.html"' in index and f'href="{SECOND}/report.html"' in index


def test_predict_scores_any_image_without_a_category(union):
    data, logs, common = union
    files = sorted(str(p) for p in data.glob("*/test/good/*.png"))  # both categories' images, one call
    import transfusion

    det = transfusion.Detector.from_run(logs / "mc", "multiclass", device="cpu")
    result = det(files)
    expected = {n: float(s) for n, s in zip(result.names, result.scores)}
    cli("-c", "predict", "--input", str(data / "*" / "test" / "good" / "*.png"), *common)
    lines = (latest_prediction(logs, "mc", "multiclass") / "predictions.jsonl").read_text().splitlines()
    got = {r["path"]: r["score"] for r in map(json.loads, lines)}
    assert {f: got[f] for f in files} == pytest.approx(expected, abs=1e-6)


def test_calibrate_the_union_or_one_category_and_predict_decides_with_it(union):
    data, logs, common = union
    cli("-c", "calibrate", "-d", str(data), "--target-fpr", "0.5", *common)
    meta = json.loads((logs / "mc" / "models" / "multiclass_meta.json").read_text())
    assert meta["calibration"]["n"] == 2  # the held-out image of each category
    cli("-c", "calibrate", "-d", str(data), "--target-fpr", "0.5", "--category", "bottle", *common)
    meta = json.loads((logs / "mc" / "models" / "multiclass_meta.json").read_text())
    bottle = meta["per_category"]["bottle"]["calibration"]
    assert bottle["n"] == 1 and meta["calibration"]["n"] == 2
    import transfusion

    union_det = transfusion.Detector.from_run(logs / "mc", "multiclass", device="cpu")
    bottle_det = transfusion.Detector.from_run(logs / "mc", "bottle", device="cpu")
    assert union_det.threshold.value == pytest.approx(meta["calibration"]["threshold"])
    assert bottle_det.threshold.value == pytest.approx(bottle["threshold"])
    out = cli("-c", "predict", "--category", "bottle", "--input", str(data / "bottle" / "test" / "good"),
              *common).stdout
    assert f"calibrated threshold {bottle['threshold']:.6f}" in out


def test_export_and_the_detector_on_a_multiclass_run(union):
    pytest.importorskip("onnxruntime")
    data, logs, common = union
    cli("-c", "export", *common)
    side = json.loads((logs / "mc" / "models" / "multiclass_onnx.json").read_text())
    assert side["category"] == "multiclass" and side["network"] == "multiclass.onnx"
    import transfusion

    files = sorted(str(p) for p in (data / SECOND / "test" / "hole").iterdir())
    torch_det = transfusion.Detector.from_run(logs / "mc", SECOND, device="cpu")
    onnx_det = transfusion.Detector.from_run(logs / "mc", SECOND, backend="onnxruntime")
    assert onnx_det(files).scores == pytest.approx(torch_det(files).scores, abs=1e-4)


def test_eval_steps_apply_to_test_multiclass(union):
    data, logs, common = union
    cli("-c", "test_multiclass", "-d", str(data), "--eval-steps", "2", "--category", "bottle", *common)
    summary = json.loads((logs / "mc" / "results" / "multiclass" / "bottle" / "summary.json").read_text())
    assert summary["schedule"]["eval_steps"] == 2


@pytest.fixture
def small_union(tmp_path) -> Path:
    return _union(tmp_path, real_bottle=False)


def test_resume_continues_to_the_same_weights_as_one_uninterrupted_run(small_union, tmp_path):
    flags = ["--log-path", str(tmp_path / "logs"), *TINY_FLAGS]
    cli("-c", "train_multiclass", "-r", "whole", "-d", str(small_union), "--epoch-num", "2", *flags)
    cli("-c", "train_multiclass", "-r", "parts", "-d", str(small_union), "--epoch-num", "1", *flags)
    cli("-c", "train_multiclass", "-r", "parts", "-d", str(small_union), "--epoch-num", "2", "--resume", *flags)
    whole = torch.load(tmp_path / "logs" / "whole" / "models" / "*_model.pkl", weights_only=True)
    parts = torch.load(tmp_path / "logs" / "parts" / "models" / "*_model.pkl", weights_only=True)
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)


def test_ownership_refuses_a_second_training_and_overwrite_moves_the_network_aside(small_union, tmp_path):
    flags = ["-r", "own", "-d", str(small_union), "--log-path", str(tmp_path / "logs"), "--epoch-num", "1",
             *TINY_FLAGS]
    cli("-c", "train_multiclass", *flags)
    r = cli("-c", "train_multiclass", *flags, check=False)
    assert r.returncode == 2 and "already has trained weights for multiclass" in r.stderr
    cli("-c", "train_multiclass", "--overwrite", *flags)
    moved = list((tmp_path / "logs" / "own").glob("replaced-*/multiclass"))
    assert len(moved) == 1 and (moved[0] / "*_model.pkl").is_file() and (moved[0] / "multiclass_meta.json").is_file()
    assert (tmp_path / "logs" / "own" / "models" / "*_model.pkl").is_file()


def test_evaluation_during_training_writes_per_category_rows_and_an_average(small_union, tmp_path):
    cli("-c", "train_multiclass", "-r", "ev", "-d", str(small_union), "--log-path", str(tmp_path / "logs"),
        "--epoch-num", "1", *TINY_FLAGS, "--eval-epoch-num", "1")
    rows = _output_rows(tmp_path / "logs", "ev")
    assert [(r["category"], r["epoch"], r["network"]) for r in rows] == [
        ("bottle", "1", "multiclass"), (SECOND, "1", "multiclass"), ("Average", "1", "multiclass")]
    mean = np.mean([float(r["aupro"]) for r in rows[:2]])
    assert float(rows[2]["aupro"]) == pytest.approx(mean, abs=0.006)


def test_dry_run_reports_the_union(small_union, tmp_path):
    out = cli("-c", "train_multiclass", "-r", "dry", "-d", str(small_union), "--log-path", str(tmp_path / "logs"),
              "--dry-run", *TINY_FLAGS).stdout
    assert "union: 8 training images of 2 categories, 2 steps per epoch" in out  # --bs 4
    assert not (tmp_path / "logs" / "dry" / "models" / "*_model.pkl").exists()


def test_category_restricts_the_union(small_union, tmp_path):
    make_mvtec(small_union, "zipper", n_train=2, n_test_good=1, defects=("x",), n_per_defect=1, size=48)
    cli("-c", "train_multiclass", "-r", "two", "-d", str(small_union), "--log-path", str(tmp_path / "logs"),
        "--epoch-num", "1", "--category", f"zipper,{SECOND}", *TINY_FLAGS)
    meta = json.loads((tmp_path / "logs" / "two" / "models" / "multiclass_meta.json").read_text())
    assert meta["categories"] == [SECOND, "zipper"]


def test_torchrun_trains_the_union_and_shards_its_test_sets(small_union, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                str(REPO / "Experiment.py")]
    flags = ["-r", "tr", "-d", str(small_union), "--log-path", str(tmp_path / "logs"), *TINY_FLAGS]
    for cmd in (["-c", "train_multiclass", "--epoch-num", "1"], ["-c", "test_multiclass"]):
        proc = subprocess.run(torchrun + cmd + flags, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    sharded = {c: _scores(tmp_path / "logs" / "tr" / "results" / "multiclass" / c) for c in ("bottle", SECOND)}
    cli("-c", "test_multiclass", *flags)  # one process, the same network
    single = {c: _scores(tmp_path / "logs" / "tr" / "results" / "multiclass" / c) for c in ("bottle", SECOND)}
    assert sharded.keys() == single.keys()
    for cat in single:  # every image scored once, by one of the two processes (threads differ: float noise)
        assert sharded[cat].keys() == single[cat].keys()
        assert [float(sharded[cat][k]) for k in single[cat]] == pytest.approx(
            [float(v) for v in single[cat].values()], abs=1e-6)


def test_texture_categories_get_foreground_masks_in_the_union(small_union, tmp_path):
    """docs/method.md §10: the texture rule is off (the category * is not in the texture list)."""
    flags = [f for f in TINY_FLAGS if f != "--no-fg-masks"]
    cli("-c", "train_multiclass", "-r", "fg", "-d", str(small_union), "--log-path", str(tmp_path / "logs"),
        "--epoch-num", "1", *flags)
    per = json.loads((tmp_path / "logs" / "fg" / "models" / "multiclass_meta.json").read_text())["per_category"]
    assert per[SECOND]["fg_masks"]["kind"] == per["bottle"]["fg_masks"]["kind"] == "computed"
    assert per[SECOND]["fg_masks"]["n"] == 4
    # a per-category run of the same texture category keeps the texture rule: no mask
    cli("-c", "train", "-r", "per", "-d", str(small_union), "--category", SECOND, "--log-path",
        str(tmp_path / "logs"), "--epoch-num", "1", *flags)
    meta = json.loads((tmp_path / "logs" / "per" / "models" / f"{SECOND}_meta.json").read_text())
    assert meta["fg_masks"]["why"] == "texture category"
