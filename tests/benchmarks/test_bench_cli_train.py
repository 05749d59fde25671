"""The pure helpers of benchmarks/bench_cli_train.py that turn measurements into the published figures."""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest
from tqdm import tqdm

from tests.fixtures.helpers import REPO


def _load():
    spec = importlib.util.spec_from_file_location("bench_cli_train", REPO / "benchmarks" / "bench_cli_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load()


def test_summarise_leaves_the_first_epoch_out_and_projects_one_mvtec_category() -> None:
    # [seconds, data wait, samples]: the first epoch (start-up) is slow and must not count
    epochs = [[100.0, 90.0, 8], [10.0, 1.0, 40], [10.0, 3.0, 40]]
    got = bench.summarise(epochs)
    # steady state: 80 samples in 20 s = 4 samples/s, 4 s of 20 waiting = 20 %
    assert got["samples_per_s"] == pytest.approx(4.0)
    assert got["wait_share"] == pytest.approx(0.2)
    # 1501 epochs x 240 images = 360,240 samples at 4/s = 90,060 s = 25.0167 h (the A100-day)
    assert got["hours_per_category"] == pytest.approx(90060 / 3600)


def test_summarise_of_a_single_epoch_uses_it() -> None:
    assert bench.summarise([[2.0, 0.5, 10]])["samples_per_s"] == pytest.approx(5.0)


def _bar_text(desc: str, done: int, total: int) -> str:
    out = io.StringIO()
    bar = tqdm(total=total, desc=desc, file=out, unit="batch", mininterval=0, miniters=1)
    for _ in range(done):
        bar.update(1)
    bar.close()
    return out.getvalue()


def test_steps_done_reads_the_training_bar_of_tqdm() -> None:
    text = _bar_text("[bottle] epoch 1/3", 5, 49)
    assert bench.steps_done(text) == 5
    # the cache's own bar (images decoded) is not a training step
    assert bench.steps_done(_bar_text("[bottle] decoding 391 training images once", 120, 391)) == 0
    assert bench.steps_done(_bar_text("[bottle] decoding 391 training images once", 120, 391) + text) == 5


def test_kib_fields_parses_proc_files() -> None:
    rollup = ("55d0c0a00000-7ffd2b5fe000 ---p 00000000 00:00 0    [rollup]\n"
              "Rss:              204800 kB\nPss:               51234 kB\nPrivate_Dirty:      1024 kB\n")
    assert bench.kib_fields(rollup, ("Pss", "Private_Dirty")) == {"Pss": 51234, "Private_Dirty": 1024}
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("no /proc")
    mine = bench.kib_fields(status.read_text(), ("VmHWM", "VmRSS"))
    assert mine["VmHWM"] >= mine["VmRSS"] > 0  # the high-water mark is never below the current RSS
