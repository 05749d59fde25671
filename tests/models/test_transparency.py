"""Opt-in reverse schedules (--eval-steps K, --early-stop N), checked against the rules as the
docs/step_study.md states them; the default stays the original's loop bit for bit."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from models.scoring import ScoringOptions, score_batch
from models.transparency import TransparencyProcess
from models.unet import TransFusionUNet, UNetConfig
from tests.fixtures.helpers import TINY_FLAGS, TINY_NET, cli
from tests.fixtures.layouts import make_mvtec

T = 20


def visits_by_the_rule(k: int, n: int = T) -> list[int]:
    """t_i = round(T−2 − i·(T−3)/(K−1)), i = 0 … K−1 (K = 1: T−2 only)."""
    if k == 1:
        return [n - 2]
    return [math.floor(n - 2 - i * (n - 3) / (k - 1) + 0.5) for i in range(k)]


@pytest.mark.parametrize("k", [18, 12, 9, 6, 4, 3, 2, 1])
def test_schedule_visits_and_jumps_follow_the_rule(k):
    pairs = TransparencyProcess(T).schedule(k)
    visits = visits_by_the_rule(k)
    assert [t for t, _ in pairs] == visits
    assert [s for _, s in pairs] == visits[1:] + [visits[-1] - 1]  # each to the next, the last to t - 1
    assert visits[0] == T - 2 and len(set(visits)) == k


def test_schedule_bounds():
    p = TransparencyProcess(T)
    assert p.schedule(None) == [(t, t - 1) for t in range(18, 0, -1)] == p.schedule(18)
    for bad in (0, 19):
        with pytest.raises(ValueError):
            p.schedule(bad)


class ConstantNet(torch.nn.Module):
    """ε̂ = x̂0 = given constants, logits = a constant: every step's update is known by hand."""

    def __init__(self, logit: float, eps: float = 0.3, x0: float = -0.2) -> None:
        super().__init__()
        self.logit, self.eps, self.x0 = logit, eps, x0
        self.calls: list[int] = []

    def forward(self, x_and_mask, t):
        self.calls.append(int(t[0]))
        x = x_and_mask[:, :-1]
        return (torch.full_like(x, self.eps), torch.full_like(x, self.x0),
                torch.full_like(x_and_mask[:, :1], self.logit))


def test_strided_steps_use_delta_between_visited_betas_and_keep_the_map_scale():
    process = TransparencyProcess(T)
    beta = torch.linspace(0, 1, T)
    image = torch.zeros(1, 3, 8, 8)
    net = ConstantNet(logit=2.0)
    res = process.reverse(net, image, n_steps=4)
    assert net.calls == [18, 12, 7, 1]
    # x_s = x_t − (Δ/β_t)·ε̂ + Δ·x̂0 with Δ = β_t − β_s, the mask being 1 everywhere (σ(2) > 0.5)
    x = image.clone()
    for t, s in [(18, 12), (12, 7), (7, 1), (1, 0)]:
        delta = beta[t] - beta[s]
        x = x - (delta / beta[t]) * 0.3 + delta * -0.2
    torch.testing.assert_close(res.x_final, x, atol=1e-6, rtol=0)
    # (sum of the K probabilities) × (T−2)/K / (T−1): the same scale as the 18-step map
    p = torch.sigmoid(torch.tensor(2.0))
    torch.testing.assert_close(res.mask_disc, torch.full_like(res.mask_disc, float(p) * 18 / 19), atol=1e-6, rtol=0)
    full = process.reverse(ConstantNet(logit=2.0), image)
    torch.testing.assert_close(full.mask_disc, res.mask_disc, atol=1e-6, rtol=0)


def test_default_and_eighteen_steps_are_the_same_code_path_bit_for_bit():
    torch.manual_seed(0)
    net = TransFusionUNet(UNetConfig(**TINY_NET)).eval()
    process = TransparencyProcess(T)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    a, _ = score_batch(net, process, image)
    b, _ = score_batch(net, process, image, ScoringOptions(eval_steps=18))
    assert torch.equal(a.final, b.final) and torch.equal(a.scores, b.scores)
    assert a.steps_run.tolist() == [18, 18]


class StabilisingNet(torch.nn.Module):
    """The mask it outputs changes every step (a band that moves with t) until t ≤ τ, where τ is
    read from the image's first pixel; from then on it is one fixed square."""

    def forward(self, x_and_mask, t):
        b, _, h, w = x_and_mask.shape
        logits = torch.full((b, 1, h, w), -5.0)
        for i in range(b):
            tau = int(round(float(x_and_mask[i, 0, 0, 0]) * 100))
            if int(t[i]) > tau:
                logits[i, 0, int(t[i]) % h] = 5.0  # row t mod h: a new mask every step
            else:
                logits[i, 0, 2:5, 2:5] = 5.0
        zeros = torch.zeros_like(x_and_mask[:, :-1])
        return zeros, zeros, logits


def test_early_stop_counts_unchanged_steps_per_image_and_fills_in_the_rest():
    """An image stops once the mask fed back has not changed for N consecutive steps; each
    remaining step counts its last probabilities; a batch gives each image's own result."""
    process = TransparencyProcess(T)
    taus = [12, 5, 0]
    image = torch.zeros(3, 3, 8, 8)
    for i, tau in enumerate(taus):
        image[i, 0, 0, 0] = tau / 100
    n = 2
    res = process.reverse(StabilisingNet(), image, early_stop=n)
    # steps 18 … τ+1 change the mask, the step at τ changes it once more (to the square), then
    # n unchanged steps: (18 − τ + 1) + n in all (τ = 0 never stabilises: all 18)
    expected_steps = [min(18, 18 - tau + 1 + n) for tau in taus]
    assert res.steps_run.tolist() == expected_steps
    alone = [process.reverse(StabilisingNet(), image[i:i + 1], early_stop=n) for i in range(3)]
    for i in range(3):
        assert alone[i].steps_run.tolist() == [expected_steps[i]]
        torch.testing.assert_close(res.mask_disc[i], alone[i].mask_disc[0], atol=0, rtol=0)
    # by hand for τ = 12: every step adds σ(±5) per pixel; after stopping the square's probabilities
    # are counted for each of the remaining steps, so the square ends at σ(5)·(1 + n + remaining)
    full = process.reverse(StabilisingNet(), image[:1])  # no early stop: the square also from t = 12 down
    torch.testing.assert_close(res.mask_disc[0], full.mask_disc[0], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = make_mvtec(tmp_path_factory.mktemp("data"), n_train=4, n_test_good=2, defects=("crack",),
                      n_per_defect=2, size=32)
    logs = tmp_path_factory.mktemp("logs")
    cli("-c", "train", "-r", "s", "-d", str(data), "--category", "bottle", "--log-path", str(logs),
        "--epoch-num", "1", *TINY_FLAGS)
    return data, logs


def test_cli_schedules_record_steps_and_the_threshold_knows_its_schedule(trained):
    data, logs = trained
    common = ["-r", "s", "--category", "bottle", "--log-path", str(logs), *TINY_FLAGS]
    cli("-c", "test", "-d", str(data), *common, "--eval-steps", "2", "--early-stop", "1")
    results = logs / "s" / "results" / "bottle"
    rows = list(csv.DictReader((results / "per_image.csv").open()))
    assert all(1 <= int(r["steps"]) <= 2 for r in rows)
    summary = json.loads((results / "summary.json").read_text())
    assert summary["schedule"] == {"eval_steps": 2, "early_stop": 1}
    meta = json.loads((logs / "s" / "models" / "bottle_meta.json").read_text())
    assert meta["f1_schedule"] == {"eval_steps": 2, "early_stop": 1}
    out = cli("-c", "predict", *common, "--input", str(data / "bottle" / "test" / "good")).stdout
    assert "the stored threshold was made with the step schedule" in out  # default schedule now
    out = cli("-c", "predict", *common, "--eval-steps", "2", "--early-stop", "1",
              "--input", str(data / "bottle" / "test" / "good")).stdout
    assert "stored threshold was made" not in out


@pytest.mark.parametrize("command, flags", [
    ("train", ["--eval-steps", "0"]), ("test", ["--eval-steps", "0"]), ("train", ["--early-stop", "0"]),
    ("test", ["--early-stop", "0"]),
    # against T: -c train checks the T it will train; other commands the run's own T (tests/utils/run/test_settings.py)
    ("train", ["--eval-steps", "19"]), ("train", ["--diffusion-num-steps", "5", "--eval-steps", "4"])])
def test_schedule_flags_are_checked_at_the_door(command, flags, tmp_path):
    result = cli("-c", command, "-r", "x", "-d", str(tmp_path), *flags, check=False)
    assert result.returncode == 2 and ("--eval-steps" in result.stderr or "--early-stop" in result.stderr)
    assert not (Path("experiments") / "x").exists()
