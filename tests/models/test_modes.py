"""Mode-specific rules for depth (d) and rgb+depth (rgbd), checked against independent re-derivations.

The rgb path is pinned down by the original implementation's tensors (test_reference.py);
d and rgbd have no such tensors, so every rule of docs/method.md §3-§6 that differs by mode is
re-derived here with small, obviously-correct code (numpy/scipy, float64) and compared.
Shapes, released key layouts and the rgbd up-block regrouping are in test_model.py.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.signal import convolve2d

from models.losses import ssim_loss, transfusion_loss
from models.scoring import anomaly_maps, box_smooth
from models.transparency import ReverseResult, TransparencyProcess
from models.unet import TransFusionUNet, UNetConfig

C_IMG = {"rgb": 3, "d": 1, "rgbd": 4}
RGB_CH = {"rgb": [0, 1, 2], "d": [], "rgbd": [0, 1, 2]}
DEPTH_CH = {"rgb": [], "d": [0], "rgbd": [3]}
T = 20


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def _beta(t: int, n: int = T) -> float:
    return t / (n - 1)  # linspace(0, 1, n)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _uniform(shape, lo, hi, g) -> torch.Tensor:
    return torch.rand(*shape, generator=g) * (hi - lo) + lo


# ---------------------------------------------------------------------------------------------
# Independent re-derivations
# ---------------------------------------------------------------------------------------------

def ref_q_sample(mode, x0, eps, mask, t):
    """docs/method.md §3 written per channel in float64."""
    x0, eps, m = _np(x0), _np(eps), _np(mask)[:, 0]
    out = x0.copy()
    for b in range(x0.shape[0]):
        beta = _beta(int(t[b]))
        for c in RGB_CH[mode]:
            out[b, c] = (1 - m[b]) * x0[b, c] + m[b] * ((1 - beta) * x0[b, c] + beta * eps[b, c])
        for c in DEPTH_CH[mode]:
            out[b, c] = x0[b, c] + beta * m[b] * eps[b, c]
    return out


def ref_next(mode, x_t, x0_hat, mask_prob, eps_hat, t, n=T):
    """docs/method.md §5 next(): rgb x_t − (Δ/β_t)·M̃·ε̂ + Δ·M̃·x̂0; depth x_t − (Δ/β_t)·M̃·ε̂; M̃ = 1[m > 0.5]."""
    x_t, x0_hat, eps_hat = _np(x_t), _np(x0_hat), _np(eps_hat)
    m = (mask_prob.detach() > 0.5).double().numpy()[:, 0]
    out = x_t.copy()
    for b in range(x_t.shape[0]):
        tb = int(t[b])
        beta, delta = _beta(tb, n), _beta(tb, n) - _beta(tb - 1, n)
        for c in RGB_CH[mode]:
            out[b, c] = x_t[b, c] - (delta / beta) * m[b] * eps_hat[b, c] + delta * m[b] * x0_hat[b, c]
        for c in DEPTH_CH[mode]:
            out[b, c] = x_t[b, c] - (delta / beta) * m[b] * eps_hat[b, c]
    return out


def ref_ssim_loss(a, b, dyn=None):
    """1 − mean SSIM, 11×11 Gaussian window σ 1.5 (per channel), zero padding 5; L from ``a``."""
    a, b = _np(a), _np(b)
    if dyn is None:
        dyn = (255.0 if a.max() > 128 else 1.0) - (-1.0 if a.min() < -0.5 else 0.0)
    x = np.arange(11) - 5
    g = np.exp(-(x ** 2) / (2 * 1.5 ** 2))
    g /= g.sum()
    w = np.outer(g, g)
    h, wd = a.shape[-2:]

    def blur(v):
        p = np.pad(v, ((0, 0), (0, 0), (5, 5), (5, 5)))
        acc = np.zeros_like(v)
        for i in range(11):
            for j in range(11):
                acc += w[i, j] * p[..., i:i + h, j:j + wd]
        return acc

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * dyn) ** 2, (0.03 * dyn) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return 1 - s.mean()


def ref_focal_mean(logits, target, alpha=0.25, gamma=2.0):
    x, y = _np(logits), _np(target)
    p = 1 / (1 + np.exp(-x))
    ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    p_t = p * y + (1 - p) * (1 - y)
    a_t = alpha * y + (1 - alpha) * (1 - y)
    return (a_t * ce * (1 - p_t) ** gamma).mean()


def ref_smooth_l1(a, b):
    d = np.abs(a - b)
    return np.where(d < 1, 0.5 * d ** 2, d - 0.5).mean()


def ref_box(m2d, k):
    return convolve2d(m2d, np.ones((k, k)) / (k * k), mode="same")


def ref_display(x, mode):
    out = _np(x).copy()
    for c in RGB_CH[mode]:
        out[:, c] = np.clip(out[:, c] / 2 + 0.5, 0, 1)
    return out


def tiny_net(mode: str, seed: int = 0) -> TransFusionUNet:
    torch.manual_seed(seed)
    n = 64 if mode == "rgbd" else 32
    cfg = UNetConfig(mode=mode, n_channels=n, ch_mults=(1, 2), attn=(False, True),
                     group_conv=(True, True), n_blocks=1)
    return TransFusionUNet(cfg).eval()


# ---------------------------------------------------------------------------------------------
# §3 forward process
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["rgb", "d", "rgbd"])
def test_q_sample_matches_per_channel_rule(mode):
    c = C_IMG[mode]
    g = _gen(10)
    x0 = _uniform((4, c, 12, 12), -1, 1, g)
    # ε deliberately NOT pre-masked: the rule itself must apply M on every channel kind
    eps = _uniform((4, c, 12, 12), -1, 1, g)
    mask = (torch.rand(4, 1, 12, 12, generator=g) > 0.5).float()
    t = torch.tensor([1, 7, 13, 19])
    out = TransparencyProcess(T, mode).q_sample(x0, eps, mask, t)
    np.testing.assert_allclose(_np(out), ref_q_sample(mode, x0, eps, mask, t), atol=1e-6, rtol=0)
    # outside the mask nothing changes, on every channel
    np.testing.assert_array_equal(_np(out) * (1 - _np(mask)), _np(x0) * (1 - _np(mask)))


@pytest.mark.parametrize("mode", ["rgb", "d", "rgbd"])
def test_q_sample_at_t0_changes_nothing(mode):
    c = C_IMG[mode]
    g = _gen(11)
    x0 = _uniform((2, c, 8, 8), -1, 1, g)
    eps = _uniform((2, c, 8, 8), -1, 1, g)
    out = TransparencyProcess(T, mode).q_sample(x0, eps, torch.ones(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(out, x0, atol=0, rtol=0)


def test_q_sample_depth_is_additive_not_a_blend():
    """d: x_t = x0 + β·M·ε; a blend would give (1−β)x0 + βε instead."""
    proc = TransparencyProcess(T, "d")
    x0 = torch.full((1, 1, 4, 4), 0.3)
    eps = torch.full((1, 1, 4, 4), 0.1)
    out = proc.q_sample(x0, eps, torch.ones(1, 1, 4, 4), torch.tensor([19]))
    torch.testing.assert_close(out, torch.full((1, 1, 4, 4), 0.4))
    # rgbd: the rgb part fully covered (= ε) at t = T−1, the depth part added
    x0 = torch.cat((torch.full((1, 3, 4, 4), 0.3), torch.full((1, 1, 4, 4), 0.3)), 1)
    eps = torch.cat((torch.full((1, 3, 4, 4), -0.7), torch.full((1, 1, 4, 4), 0.1)), 1)
    out = TransparencyProcess(T, "rgbd").q_sample(x0, eps, torch.ones(1, 1, 4, 4), torch.tensor([19]))
    torch.testing.assert_close(out[:, :3], torch.full((1, 3, 4, 4), -0.7))
    torch.testing.assert_close(out[:, 3:], torch.full((1, 1, 4, 4), 0.4))


# ---------------------------------------------------------------------------------------------
# §5 next()
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["rgb", "d", "rgbd"])
def test_next_step_matches_formula(mode):
    c = C_IMG[mode]
    g = _gen(20)
    x_t = _uniform((4, c, 8, 8), -1, 1, g)
    x0_hat = _uniform((4, c, 8, 8), -1, 1, g)
    eps_hat = _uniform((4, c, 8, 8), -1, 1, g)
    prob = torch.rand(4, 1, 8, 8, generator=g)
    prob[0, 0, 0, :4] = torch.tensor([0.5, 0.49, 0.5000001, 1.0])
    t = torch.tensor([1, 2, 10, 19])
    out = TransparencyProcess(T, mode).next_step(x_t, x0_hat, prob, eps_hat, t)
    np.testing.assert_allclose(_np(out), ref_next(mode, x_t, x0_hat, prob, eps_hat, t), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["d", "rgbd"])
def test_next_step_depth_has_no_x0_term(mode):
    c = C_IMG[mode]
    g = _gen(21)
    proc = TransparencyProcess(T, mode)
    x_t = _uniform((2, c, 8, 8), -1, 1, g)
    x0_hat = _uniform((2, c, 8, 8), -1, 1, g)
    eps_hat = _uniform((2, c, 8, 8), -1, 1, g)
    prob = torch.ones(2, 1, 8, 8)
    prob[:, :, :4] = 0.0
    t = torch.tensor([5, 12])
    base = proc.next_step(x_t, x0_hat, prob, eps_hat, t)

    other = x0_hat.clone()
    other[:, DEPTH_CH[mode]] += 3.0
    torch.testing.assert_close(proc.next_step(x_t, other, prob, eps_hat, t), base, atol=0, rtol=0)

    if RGB_CH[mode]:
        other = x0_hat.clone()
        other[:, RGB_CH[mode]] += 3.0
        changed = proc.next_step(x_t, other, prob, eps_hat, t)
        diff = (changed - base).abs()
        assert (diff[:, RGB_CH[mode], 4:] > 1e-3).all(), "rgb x̂0 term missing where the mask is set"
        assert (diff[:, :, :4] == 0).all(), "x̂0 must not matter where the mask is 0"
        assert (diff[:, DEPTH_CH[mode]] == 0).all()


@pytest.mark.parametrize("mode", ["d", "rgbd"])
def test_next_step_threshold_is_strictly_above_half(mode):
    c = C_IMG[mode]
    proc = TransparencyProcess(T, mode)
    x_t = torch.zeros(1, c, 1, 4)
    ones = torch.ones(1, c, 1, 4)
    prob = torch.tensor([[[[0.5, 0.4999, 0.50001, 0.9]]]])
    out = proc.next_step(x_t, ones, prob, ones, torch.tensor([4]))
    moved = (out != 0).any(dim=1)[0, 0].tolist()
    assert moved == [False, False, True, True]


# ---------------------------------------------------------------------------------------------
# §6 reverse process with a fake deterministic network
# ---------------------------------------------------------------------------------------------

class FakeNet:
    """Returns fixed per-step tensors and records what it was fed."""

    def __init__(self, mode, batch, size, seed):
        c = C_IMG[mode]
        g = _gen(seed)
        self.out = {}
        for t in range(1, T - 1):
            logits = torch.randn(batch, 1, size, size, generator=g) * 3
            # edge cases of the float32-sigmoid threshold
            logits[0, 0, 0, 0] = 0.0      # σ = 0.5 exactly -> 0
            logits[0, 0, 0, 1] = 5e-8     # σ rounds to 0.5 in float32 -> 0
            logits[0, 0, 0, 2] = 1e-6     # σ > 0.5 -> 1
            self.out[t] = (torch.randn(batch, c, size, size, generator=g) * 0.3,
                           torch.rand(batch, c, size, size, generator=g) * 2 - 1, logits)
        self.calls = []

    def __call__(self, x_and_mask, t):
        self.calls.append((x_and_mask.clone(), t.clone()))
        ts = set(t.tolist())
        assert len(ts) == 1
        return self.out[ts.pop()]


@pytest.mark.parametrize("mode", ["d", "rgbd"])
def test_reverse_with_fake_network(mode):
    c, b, s = C_IMG[mode], 2, 8
    assert torch.sigmoid(torch.tensor(5e-8)) == 0.5  # the premise of the edge case
    g = _gen(30)
    image = torch.rand(b, c, s, s, generator=g) * 2 - 1
    net = FakeNet(mode, b, s, seed=31)
    res = TransparencyProcess(T, mode).reverse(net, image)

    # 18 calls at t = 18 … 1, each with the whole batch
    assert [int(tt[0]) for _, tt in net.calls] == list(range(T - 2, 0, -1))
    assert all(tt.shape == (b,) and (tt == tt[0]).all() for _, tt in net.calls)

    x = _np(image)
    mask = np.zeros((b, 1, s, s))
    acc = np.zeros((b, 1, s, s))
    for (fed, _), t in zip(net.calls, range(T - 2, 0, -1)):
        np.testing.assert_allclose(_np(fed[:, :c]), x, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(_np(fed[:, c:]), mask)
        eps_hat, x0_hat, logits = net.out[t]
        p = torch.sigmoid(logits.float())
        x = ref_next(mode, torch.from_numpy(x), x0_hat, p, eps_hat, torch.full((b,), t))
        acc += _np(p)
        mask = (p > 0.5).double().numpy()
        # the edge cases really were taken as 0, 0, 1
        assert mask[0, 0, 0, :3].tolist() == [0.0, 0.0, 1.0]
    np.testing.assert_allclose(_np(res.x_final), x, atol=1e-5, rtol=0)
    np.testing.assert_allclose(_np(res.mask_disc), acc / (T - 1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["d", "rgbd"])
def test_reverse_batch_equals_one_at_a_time(mode):
    net = tiny_net(mode)
    proc = TransparencyProcess(6, mode)  # 4 steps: the property does not depend on T
    image = torch.rand(2, C_IMG[mode], 16, 16, generator=_gen(40)) * 2 - 1
    both = proc.reverse(net, image)
    for i in range(2):
        one = proc.reverse(net, image[i:i + 1])
        torch.testing.assert_close(one.x_final, both.x_final[i:i + 1], atol=1e-5, rtol=0)
        torch.testing.assert_close(one.mask_disc, both.mask_disc[i:i + 1], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# §6 scoring
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [7, 3, 4, 6])
def test_box_smooth_is_scipy_same_convolution(k):
    m = torch.rand(2, 1, 11, 11, generator=_gen(50), dtype=torch.float64)
    out = box_smooth(m, k)
    assert out.shape == m.shape
    for i in range(2):
        np.testing.assert_allclose(out[i, 0].numpy(), ref_box(m[i, 0].numpy(), k), atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode,k", [("d", 7), ("rgbd", 7), ("d", 4), ("rgbd", 6)])
def test_anomaly_maps(mode, k):
    c, b, s = C_IMG[mode], 2, 12
    g = _gen(51)
    # values beyond [-1, 1]: the rgb clipping and the untouched depth both matter
    image = _uniform((b, c, s, s), -2, 2, g)
    x_final = _uniform((b, c, s, s), -2, 2, g)
    disc = torch.rand(b, 1, s, s, generator=g)
    maps = anomaly_maps(image, ReverseResult(x_final=x_final, mask_disc=disc), mode, kernel_size=k, weight=0.95)

    recon = ((ref_display(image, mode) - ref_display(x_final, mode)) ** 2).mean(axis=1)
    if mode == "d":  # depth-only input stays as is: raw squared difference
        np.testing.assert_allclose(recon, ((_np(image) - _np(x_final)) ** 2)[:, 0])
    np.testing.assert_allclose(maps.mask_recon.numpy(), recon, atol=1e-5, rtol=0)
    np.testing.assert_allclose(maps.mask_disc.numpy(), _np(disc)[:, 0], atol=0, rtol=0)
    for i in range(b):
        final = 0.95 * ref_box(_np(disc)[i, 0], k) + 0.05 * ref_box(recon[i], k)
        np.testing.assert_allclose(maps.final[i].numpy(), final, atol=1e-6, rtol=0)
        assert maps.scores[i].item() == pytest.approx(final.max(), abs=1e-6)


def test_rgbd_recon_leaves_depth_raw_and_clips_rgb():
    image = torch.zeros(1, 4, 1, 1)
    x_final = torch.zeros(1, 4, 1, 1)
    image[0, :, 0, 0] = torch.tensor([3.0, -3.0, 0.0, 2.0])
    x_final[0, :, 0, 0] = torch.tensor([-3.0, 3.0, 1.0, -1.0])
    disc = torch.zeros(1, 1, 1, 1)
    maps = anomaly_maps(image, ReverseResult(x_final=x_final, mask_disc=disc), "rgbd", kernel_size=1)
    # rgb: clip(x/2+0.5) -> (1 vs 0), (0 vs 1), (0.5 vs 1); depth raw: (2 − (−1))² = 9
    expected = (1.0 + 1.0 + 0.25 + 9.0) / 4
    assert maps.mask_recon.item() == pytest.approx(expected)
    assert maps.final.item() == pytest.approx(0.05 * expected)


# ---------------------------------------------------------------------------------------------
# §5 losses
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lo_a,hi_a,lo_b,hi_b", [(-1, 1, 0, 1), (0, 1, -1, 1), (-0.4, 0.6, -1, 1),
                                                 (0, 255, 0, 255), (-1, 200, 0, 1)])
def test_ssim_loss_direct(lo_a, hi_a, lo_b, hi_b):
    g = _gen(60)
    a = _uniform((2, 3, 16, 16), lo_a, hi_a, g)
    b = (a + _uniform((2, 3, 16, 16), -0.3, 0.3, g) * (hi_b - lo_b)).clamp(lo_b, hi_b)
    got = ssim_loss(a, b).item()
    want = ref_ssim_loss(a, b)
    assert got == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_ssim_dynamic_range_comes_from_the_first_argument():
    g = _gen(61)
    a = _uniform((1, 1, 16, 16), 0, 1, g)          # L = 1
    b = _uniform((1, 1, 16, 16), -1, 1, g) * 0.3 + a * 0.7
    b[0, 0, 0, 0] = -0.9                            # would give L = 2 if taken from b
    assert ssim_loss(a, b).item() == pytest.approx(ref_ssim_loss(a, b, dyn=1.0), rel=1e-4)
    assert ssim_loss(b, a).item() == pytest.approx(ref_ssim_loss(b, a, dyn=2.0), rel=1e-4)
    # and the two ranges really give different numbers (the check above is discriminating)
    assert abs(ref_ssim_loss(a, b, dyn=1.0) - ref_ssim_loss(a, b, dyn=2.0)) > 1e-3


def _loss_case(mode, seed):
    """Predictions whose sub-tensors have different dynamic ranges, so L from the wrong
    argument or from the wrong slice changes the SSIM values."""
    c, b, s = C_IMG[mode], 3, 16
    g = _gen(seed)
    x0 = _uniform((b, c, s, s), -1, 1, g)
    mask = torch.zeros(b, 1, s, s)
    mask[0, :, 3:11, 4:13] = 1
    mask[1, :, 8:15, 0:6] = 1
    eps = mask * _uniform((b, c, s, s), -1, 1, g)
    t = torch.tensor([3, 11, 19])
    eps_hat = _uniform((b, c, s, s), -1, 1, g)
    x0_hat = _uniform((b, c, s, s), 0, 1, g)                      # rgb part: L = 1, x0's would be 2
    for ch in DEPTH_CH[mode]:
        eps_hat[:, ch] = _uniform((b, s, s), -0.3, 0.4, g)          # depth ε̂: L = 1 (ε_β alone could give 2)
        x0_hat[:, ch] = _uniform((b, s, s), -1, 0.2, g)             # depth x̂0: L = 2
        x0[:, ch] = _uniform((b, s, s), -0.2, 0.3, g)               # depth x0 alone: L = 1
    logits = torch.randn(b, 1, s, s, generator=g) * 2
    x_t = TransparencyProcess(T, mode).q_sample(x0, eps, mask, t)
    return x_t, t, x0, eps, mask, eps_hat, x0_hat, logits


@pytest.mark.parametrize("mode", ["d", "rgbd"])
def test_loss_terms_match_spec(mode):
    x_t, t, x0, eps, mask, eps_hat, x0_hat, logits = _loss_case(mode, 70)
    proc = TransparencyProcess(T, mode)
    terms = transfusion_loss(proc, x_t, t, x0, eps, mask, eps_hat, x0_hat, logits)

    eps_beta = eps * torch.tensor([_beta(int(v)) for v in t], dtype=torch.float64).view(-1, 1, 1, 1)
    eh, eb, xh, x0n = _np(eps_hat), _np(eps_beta), _np(x0_hat), _np(x0)
    r, d = RGB_CH[mode], DEPTH_CH[mode]

    def mse(a, b):
        return ((a - b) ** 2).mean()

    anomaly = mse(eh[:, d], eb[:, d]) + ref_ssim_loss(eps_hat[:, d], eps_beta[:, d])
    if r:
        anomaly += mse(eh[:, r], eb[:, r])
    prob = torch.sigmoid(logits)
    mask_term = 5 * ref_focal_mean(logits, mask) + ref_smooth_l1(_np(prob), _np(mask))
    normal = 0.0
    for part in (r, d):
        if part:
            normal += ref_ssim_loss(x0_hat[:, part], x0[:, part]) + np.abs(xh[:, part] - x0n[:, part]).mean()
    step = mse(ref_next(mode, x_t, x0_hat, prob, eps_hat, t),
               ref_next(mode, x_t, x0, mask, eps_beta.float(), t))

    assert terms.anomaly.item() == pytest.approx(anomaly, rel=1e-5, abs=1e-6)
    assert terms.mask.item() == pytest.approx(mask_term, rel=1e-5, abs=1e-6)
    assert terms.normal.item() == pytest.approx(normal, rel=1e-5, abs=1e-6)
    assert terms.step.item() == pytest.approx(step, rel=1e-5, abs=1e-7)
    assert terms.total.item() == pytest.approx(anomaly + mask_term + normal + step, rel=1e-5)


def test_rgbd_ssim_ranges_are_per_part():
    """The rgbd normal term's SSIM uses L of the rgb part and of the depth part separately:
    with L from the whole x̂0 (min < −0.5 through the depth part) the rgb SSIM would differ."""
    x_t, t, x0, eps, mask, eps_hat, x0_hat, logits = _loss_case("rgbd", 71)
    alt = ref_ssim_loss(x0_hat[:, :3], x0[:, :3], dyn=2.0)
    right = ref_ssim_loss(x0_hat[:, :3], x0[:, :3])
    assert abs(alt - right) > 1e-4  # the case discriminates
    terms = transfusion_loss(TransparencyProcess(T, "rgbd"), x_t, t, x0, eps, mask, eps_hat, x0_hat, logits)
    depth = ref_ssim_loss(x0_hat[:, 3:], x0[:, 3:]) + np.abs(_np(x0_hat[:, 3:]) - _np(x0[:, 3:])).mean()
    rgb_l1 = np.abs(_np(x0_hat[:, :3]) - _np(x0[:, :3])).mean()
    assert terms.normal.item() == pytest.approx(right + rgb_l1 + depth, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# §4 the network in d and rgbd
# ---------------------------------------------------------------------------------------------

def _pos(b, s):
    col = torch.tensor([math.sin(i) for i in range(s)], dtype=torch.float32)
    return col.view(1, 1, s, 1).expand(b, 1, s, s)


def _capture_inputs(net, names):
    seen, handles = {}, []
    for name in names:
        mod = net.get_submodule(name)
        handles.append(mod.register_forward_pre_hook(
            lambda m, args, name=name: seen.__setitem__(name, args[0].detach().clone())))
    return seen, handles


@pytest.mark.parametrize("mode", ["rgb", "d", "rgbd"])
def test_input_projection_sees_image_mask_and_sin_rows(mode):
    c, b, s = C_IMG[mode], 2, 16
    net = tiny_net(mode)
    x = torch.randn(b, c + 1, s, s, generator=_gen(80))
    names = ["image_proj_rgb", "image_proj_d"] if mode == "rgbd" else ["image_proj"]
    seen, handles = _capture_inputs(net, names)
    with torch.no_grad():
        net(x, torch.tensor([2, 9]))
    for h in handles:
        h.remove()
    pos, m = _pos(b, s), x[:, c:]
    if mode == "rgbd":
        torch.testing.assert_close(seen["image_proj_rgb"], torch.cat((x[:, :3], m, pos), 1), atol=1e-6, rtol=0)
        torch.testing.assert_close(seen["image_proj_d"], torch.cat((x[:, 3:4], m, pos), 1), atol=1e-6, rtol=0)
    else:
        torch.testing.assert_close(seen["image_proj"], torch.cat((x[:, :c], m, pos), 1), atol=1e-6, rtol=0)


def test_rgbd_heads_read_their_own_half():
    net = tiny_net("rgbd")
    n = net.cfg.n_channels
    x = torch.randn(2, 5, 16, 16, generator=_gen(81))
    t = torch.tensor([4, 15])
    seen, handles = _capture_inputs(net, ["norm"])
    with torch.no_grad():
        eps, mean, logits = net(x, t)
    for h in handles:
        h.remove()
    feat = seen["norm"]
    assert feat.shape[1] == n
    act = F.silu(F.group_norm(feat, 8, net.norm.weight, net.norm.bias, net.norm.eps))
    with torch.no_grad():
        def conv(mod, inp):
            return F.conv2d(inp, mod.weight, mod.bias, padding=1)
        torch.testing.assert_close(eps[:, :3], conv(net.final, act[:, :n // 2]), atol=1e-5, rtol=0)
        torch.testing.assert_close(eps[:, 3:], conv(net.final_d, act[:, n // 2:]), atol=1e-5, rtol=0)
        torch.testing.assert_close(mean[:, :3], conv(net.final_mean, feat[:, :n // 2]), atol=1e-5, rtol=0)
        torch.testing.assert_close(mean[:, 3:], conv(net.final_mean_d, feat[:, n // 2:]), atol=1e-5, rtol=0)

    # perturbation view: zeroing one head touches exactly its own output channels
    for head, which, chans in [("final_d", 0, [3]), ("final", 0, [0, 1, 2]),
                               ("final_mean_d", 1, [3]), ("final_mean", 1, [0, 1, 2])]:
        mod = getattr(net, head)
        saved = (mod.weight.data.clone(), mod.bias.data.clone())
        mod.weight.data.zero_()
        mod.bias.data.zero_()
        with torch.no_grad():
            out = net(x, t)
        mod.weight.data.copy_(saved[0])
        mod.bias.data.copy_(saved[1])
        ref = (eps, mean, logits)
        others = [ch for ch in range(4) if ch not in chans]
        torch.testing.assert_close(out[which][:, others], ref[which][:, others], atol=0, rtol=0)
        assert (out[which][:, chans] == 0).all()
        torch.testing.assert_close(out[1 - which], ref[1 - which], atol=0, rtol=0)
        torch.testing.assert_close(out[2], logits, atol=0, rtol=0)


def _hand_attention(x, attn):
    b, c, h, w = x.shape
    seq = x.flatten(2).transpose(1, 2).double()
    qkv = seq @ attn.projection.weight.double().T + attn.projection.bias.double()
    q, k, v = qkv[..., :c], qkv[..., c:2 * c], qkv[..., 2 * c:]
    a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)
    out = (a @ v) @ attn.output.weight.double().T + attn.output.bias.double() + seq
    return out.transpose(1, 2).reshape(b, c, h, w)


def _attn_blocks(net):
    blocks = [f"down.{i}" for i, m in enumerate(net.down) if getattr(m, "attn", None) is not None]
    blocks += [f"up.{i}" for i, m in enumerate(net.up) if getattr(m, "attn", None) is not None]
    return blocks


def test_rgbd_separate_attention_per_half():
    net = tiny_net("rgbd")
    blocks = _attn_blocks(net)
    assert "down.2" in blocks and net.middle.attn_d is not None
    x = torch.randn(1, 5, 16, 16, generator=_gen(82))
    t = torch.tensor([6])

    def run():
        seen, handles = {}, []
        for name in ["down.2", "down.2.res", "middle"]:
            mod = net.get_submodule(name)
            handles.append(mod.register_forward_hook(
                lambda m, a, o, name=name: seen.__setitem__(name, (a[0].detach().clone(), o.detach().clone()))))
        with torch.no_grad():
            net(x, t)
        for h in handles:
            h.remove()
        return seen

    base = run()
    res_out, block_out = base["down.2.res"][1], base["down.2"][1]
    half = block_out.shape[1] // 2
    block = net.get_submodule("down.2")
    want = torch.cat((_hand_attention(res_out[:, :half], block.attn),
                      _hand_attention(res_out[:, half:], block.attn_d)), 1)
    torch.testing.assert_close(block_out.double(), want, atol=1e-5, rtol=0)

    for block_name, attr, changed in [("down.2", "attn_d", "depth"), ("down.2", "attn", "rgb"),
                                      ("middle", "attn_d", "depth"), ("middle", "attn", "rgb")]:
        mod = getattr(net.get_submodule(block_name), attr)
        saved = mod.output.weight.data.clone()
        mod.output.weight.data.add_(0.5)
        after = run()
        mod.output.weight.data.copy_(saved)
        inp0, out0 = base[block_name]
        inp1, out1 = after[block_name]
        torch.testing.assert_close(inp1, inp0, atol=0, rtol=0)  # earlier layers untouched
        h = out0.shape[1] // 2
        same, diff = (slice(0, h), slice(h, None)) if changed == "depth" else (slice(h, None), slice(0, h))
        torch.testing.assert_close(out1[:, same], out0[:, same], atol=0, rtol=0)
        assert not torch.allclose(out1[:, diff], out0[:, diff]), f"{block_name}.{attr} had no effect"


def test_d_network_heads_and_input():
    net = tiny_net("d")
    assert net.image_proj.in_channels == 3  # depth, mask, position
    assert net.final.out_channels == 1 and net.final_mean.out_channels == 1
    assert not hasattr(net, "final_d") and not hasattr(net, "attn_d") and net.down[2].attn_d is None
