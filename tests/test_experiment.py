"""Experiment.py end to end, in process, on a generated miniature MVTec-layout set."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.fixtures.helpers import TINY_FLAGS, cli, cli_subprocess, latest_prediction
from tests.fixtures.layouts import make_mvtec

# every test here drives the command line, a subprocess or a trained run
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_mvtec(tmp_path_factory.mktemp("mvtec"), category="bottle", n_train=6, n_test_good=3,
                      defects=("crack", "hole"), n_per_defect=2, size=48)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    logs = tmp_path_factory.mktemp("logs")
    cli("-c", "train", "-r", "tiny", "-d", str(data), "-ds", "mvtec", "--category", "bottle",
        "--log-path", str(logs), "--epoch-num", "2", *TINY_FLAGS)
    return logs


def test_train_writes_released_format_checkpoint(trained):
    models = trained / "tiny" / "models"
    sd = torch.load(models / "bottle_model.pkl", weights_only=True)
    assert sd and all(k.startswith("model.") for k in sd)
    assert "model.pos_emb.penc.inv_freq" in sd and "model.final_seg.norm.running_mean" in sd
    meta = json.loads((models / "bottle_meta.json").read_text())
    assert meta["epoch"] == 2 and meta["img_size"] == 32 and meta["unet"]["n_channels"] == 32
    assert any((trained / "tiny" / "tensorboard" / "bottle").iterdir())


def _per_image(results: Path) -> dict[Path, float]:
    return {Path(r["image_path"]).resolve(): float(r["score"])
            for r in csv.DictReader((results / "per_image.csv").open())}


def test_test_reports_numbers_and_writes_results(trained, data):
    out = cli("-c", "test", "-r", "tiny", "-d", str(data), "-ds", "mvtec", "--category", "bottle",
              "--log-path", str(trained), "--visualize", "--eval-bs", "3", *TINY_FLAGS).stdout
    last = out.strip().splitlines()[-1]
    assert last.startswith("AVG AUROC: ") and ", AVG AUPRO: " in last
    res = trained / "tiny" / "results" / "bottle"
    rows = list(csv.DictReader((res / "per_image.csv").open()))
    assert len(rows) == 7 and {r["defect"] for r in rows} == {"good", "crack", "hole"}
    summary = json.loads((res / "summary.json").read_text())
    assert set(summary["metrics"]) >= {"image_auroc", "aupro", "pixel_auroc", "image_ap", "image_f1_max"}
    assert summary["checkpoint"].endswith("bottle_model.pkl")
    csv_rows = (trained / "tiny" / "output.csv").read_text().splitlines()
    assert csv_rows[0].startswith("timestamp,run,category") and csv_rows[1].split(",")[2] == "bottle"
    assert len(list((res / "visualizations").glob("*.png"))) == 7
    assert (res / "roc.png").exists() and (res / "pro.png").exists()
    auroc = float(last.split("AVG AUROC: ")[1].split(",")[0])
    assert auroc == pytest.approx(100 * summary["metrics"]["image_auroc"], abs=0.01)

    # predict on the test images, with the F1-max threshold that -c test stored
    cli("-c", "predict", "-r", "tiny", "--category", "bottle", "--log-path", str(trained),
        "--input", str(data / "bottle" / "test" / "*" / "*.png"), *TINY_FLAGS)
    lines = (latest_prediction(trained, "tiny", "bottle") / "predictions.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert len(recs) == 7 and all(r["decision"] in ("OK", "defect") for r in recs)
    predicted = {Path(r["path"]).resolve(): r["score"] for r in recs}
    tested = _per_image(res)
    assert predicted.keys() == tested.keys()
    for path, score in tested.items():  # the same numbers as -c test
        assert predicted[path] == pytest.approx(score, abs=1e-6)


def test_resume_continues_exactly_like_an_uninterrupted_run(data, tmp_path):
    common = ["-d", str(data), "-ds", "mvtec", "--category", "bottle", "--save-every", "1", *TINY_FLAGS]
    cli("-c", "train", "-r", "a", "--log-path", str(tmp_path), "--epoch-num", "3", *common)
    cli("-c", "train", "-r", "b", "--log-path", str(tmp_path), "--epoch-num", "2", *common)
    out = cli("-c", "train", "-r", "b", "--log-path", str(tmp_path), "--epoch-num", "3", "--resume", *common)
    assert "resuming at epoch 3" in out.stdout
    a = torch.load(tmp_path / "a" / "models" / "bottle_model.pkl", weights_only=True)
    b = torch.load(tmp_path / "b" / "models" / "bottle_model.pkl", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("argv,needle", [
    (["-c", "train", "-r", "x", "-d", "/nonexistent/mvtec"], "/nonexistent/mvtec"),
    (["-c", "test", "-r", "never_trained", "-d", "."], "never_trained"),
])
def test_bad_input_gives_one_line_error(argv, needle, tmp_path):
    result = cli(*argv, "--log-path", str(tmp_path), *TINY_FLAGS, check=False)
    assert result.returncode == 2
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], result.stderr
    assert "Traceback" not in result.stderr


class _Writes:
    """A stream that keeps each write call apart, as a pipe shared by several processes would."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_an_error_line_reaches_stderr_in_one_write(tmp_path, monkeypatch):
    """torchrun's ranks share one stderr pipe: a message written as text, then newline, can run
    into another rank's on one line (seen in test_run_ownership's torchrun tests)."""
    import Experiment

    stream = _Writes()
    monkeypatch.setattr("sys.stderr", stream)
    rc = Experiment.main(["-c", "test", "-r", "never_trained", "-d", ".", "--log-path", str(tmp_path), *TINY_FLAGS])
    assert rc == 2
    (line,) = [c for c in stream.calls if "error: " in c]
    assert line.startswith("error: ") and line.endswith("\n") and line.count("\n") == 1, stream.calls


def test_a_fresh_interpreter_runs_the_command_line(data, tmp_path):
    """Everything else runs in process; this is the real `python Experiment.py` once."""
    proc = cli_subprocess("-c", "train", "-r", "sub", "-d", str(data), "--category", "bottle",
                          "--log-path", str(tmp_path), "--epoch-num", "1", *TINY_FLAGS)
    assert "trained 1 epochs" in proc.stdout and (tmp_path / "sub" / "models" / "bottle_model.pkl").is_file()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_and_tests(data, trained, tmp_path, amp):
    """--amp trains a float32 checkpoint, and testing under --amp gives scores close to, but
    not the same as, float32 scores of the same weights (the network really ran in amp)."""
    common = ["-d", str(data), "-ds", "mvtec", "--category", "bottle", *TINY_FLAGS]
    cli("-c", "train", "-r", amp, "--epoch-num", "1", "--log-path", str(tmp_path), "--amp", amp, *common)
    sd = torch.load(tmp_path / amp / "models" / "bottle_model.pkl", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in sd.values())  # saved in float32
    results = trained / "tiny" / "results" / "bottle"
    cli("-c", "test", "-r", "tiny", "--log-path", str(trained), *common)
    full = _per_image(results)
    cli("-c", "test", "-r", "tiny", "--log-path", str(trained), "--amp", amp, *common)
    mixed = _per_image(results)
    diffs = [abs(mixed[p] - full[p]) for p in full]
    assert max(diffs) < 0.05 and max(diffs) > 0, diffs
