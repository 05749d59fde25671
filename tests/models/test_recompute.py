"""The default speed and memory choices keep the numbers: recomputed activations, channels_last, malloc."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from models.losses import transfusion_loss
from models.runtime import apply_memory_format, memory_format
from models.transparency import TransparencyProcess
from models.unet import TransFusionUNet, UNetConfig
from tests.fixtures.helpers import REPO, TINY_NET

ROOT = REPO


@pytest.fixture(autouse=True)
def recompute_every_size(monkeypatch):
    """These tiny tensors are below the size threshold: recompute them anyway, so the lean path
    is what the tests below compare with plain autograd."""
    import models.recompute as recompute

    monkeypatch.setattr(recompute, "RECOMPUTE_MIN_BYTES", 0)


def _net(mode: str, recompute: bool, layout=torch.contiguous_format) -> TransFusionUNet:
    torch.manual_seed(0)
    net = TransFusionUNet(UNetConfig(mode=mode, **TINY_NET)).train().set_recompute(recompute)
    return net.to(memory_format=layout)


def _step(net: TransFusionUNet, mode: str, size: int = 32, amp: bool = False):
    """One real training loss + backward; returns outputs, input grad, param grads, buffers."""
    process = TransparencyProcess(20, mode)
    c = net.cfg.image_channels
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, c, size, size, generator=g) * 2 - 1
    mask = torch.zeros(4, 1, size, size)
    mask[:2, :, 8:20, 10:24] = 1
    eps = mask * (torch.rand(4, c, size, size, generator=g) * 2 - 1)
    t = torch.tensor([1, 5, 11, 18])
    x_t = process.q_sample(x0, eps, mask, t)
    inp = torch.cat((x_t, mask), 1).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        eps_hat, x0_hat, logits = net(inp, t)
    terms = transfusion_loss(process, x_t, t, x0, eps, mask, eps_hat.float(), x0_hat.float(), logits.float())
    terms.total.backward()
    return ((eps_hat.detach(), x0_hat.detach(), logits.detach(), inp.grad),
            {k: p.grad for k, p in net.named_parameters()},
            {k: b.clone() for k, b in net.named_buffers()})


@pytest.mark.parametrize("mode", ["rgb", "d", "rgbd"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_recompute_is_bit_identical(mode, layout):
    """Outputs, input and parameter gradients, BatchNorm running stats: torch.equal, not close."""
    plain = _step(_net(mode, False, layout), mode)
    lean = _step(_net(mode, True, layout), mode)
    for a, b in zip(plain[0], lean[0]):
        assert torch.equal(a, b)
    assert plain[1].keys() == lean[1].keys()
    for k in plain[1]:
        assert torch.equal(plain[1][k], lean[1][k]), k
    for k in plain[2]:
        assert torch.equal(plain[2][k], lean[2][k]), k  # running stats updated once, not twice


@pytest.mark.slow
def test_recompute_under_bf16_autocast_matches_plain():
    plain = _step(_net("rgb", False), "rgb", amp=True)
    lean = _step(_net("rgb", True), "rgb", amp=True)
    for a, b in zip(plain[0], lean[0]):
        assert torch.equal(a, b)
    for k in plain[1]:
        torch.testing.assert_close(plain[1][k], lean[1][k], rtol=1e-5, atol=1e-6)


def _saved_bytes(net: TransFusionUNet, size: int = 64) -> int:
    """Bytes of the distinct activations autograd keeps for backward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:  # views (q, k, v of one projection) count once
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randn(2, 4, size, size)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        eps_hat, x0_hat, logits = net(x, torch.tensor([3, 7]))
    (eps_hat.sum() + x0_hat.sum() + logits.sum()).backward()
    return sum(seen.values())


def test_recompute_stores_far_fewer_activations():
    """The default architecture (at 32 channels): well under half the saved bytes."""
    def net(recompute):
        torch.manual_seed(0)
        return TransFusionUNet(UNetConfig(n_channels=32)).train().set_recompute(recompute)
    plain, lean = _saved_bytes(net(False)), _saved_bytes(net(True))
    assert lean < 0.45 * plain, (lean, plain)


def test_recompute_only_above_the_size_threshold(monkeypatch):
    """Inputs below RECOMPUTE_MIN_BYTES take plain autograd (which keeps more), larger ones the
    lean path; the gradients are the same whatever the threshold."""
    import models.recompute as recompute

    def saved_and_grads(threshold: int):
        monkeypatch.setattr(recompute, "RECOMPUTE_MIN_BYTES", threshold)
        torch.manual_seed(0)
        net = TransFusionUNet(UNetConfig(**TINY_NET)).train()
        x = torch.randn(2, 4, 32, 32)
        saved = _saved_bytes(net, size=32)
        torch.manual_seed(1)
        net(x, torch.tensor([2, 9]))[0].sum().backward()
        return saved, [p.grad.clone() for p in net.parameters()]

    lean, lean_grads = saved_and_grads(0)
    # between the sizes of the two levels' inputs (batch 2, float32): 32 channels at 32 px are
    # 256 KiB and recompute, 32-64 channels at 16 px are 64-128 KiB and do not
    mixed, mixed_grads = saved_and_grads(200 * 2**10)
    plain, plain_grads = saved_and_grads(2**40)  # nothing is that large
    assert lean < mixed < plain, (lean, mixed, plain)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(lean_grads, mixed_grads, plain_grads))


def test_recompute_is_not_used_without_autograd():
    net = _net("rgb", True).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 4, 32, 32), torch.tensor([3]))
    assert all(o.grad_fn is None for o in out)


def test_memory_format_default_is_the_originals_layout():
    """Faithful first: contiguous by default on every device; channels_last only when asked."""
    from utils.Argparser import parse_args

    args = parse_args(["-c", "test", "-r", "x", "-d", "x"])
    assert args.memory_format == "contiguous" and memory_format(args.memory_format) == torch.contiguous_format
    assert memory_format("channels_last") == torch.channels_last
    with pytest.raises(SystemExit):
        parse_args(["-c", "test", "-r", "x", "-d", "x", "--memory-format", "auto"])


def test_channels_last_network_agrees_with_contiguous():
    torch.manual_seed(0)
    net = TransFusionUNet(UNetConfig(**TINY_NET)).eval()
    x, t = torch.randn(2, 4, 32, 32), torch.tensor([2, 9])
    with torch.no_grad():
        ref = net(x, t)
        net = apply_memory_format(net, "channels_last")
        assert net.image_proj.weight.is_contiguous(memory_format=torch.channels_last)
        out = net(x, t)
    assert out[0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(ref, out):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_allocator_tuning_applies_on_linux_and_keeps_results():
    code = ("from utils.machine.allocator import tune_allocator as t; import torch; a = [t(), t(), t(True), t()]; "
            "x = torch.ones(64, 2**20); del x; y = torch.ones(64, 2**20); print(*a, float(y.sum()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    expected = ["True"] * 4 if sys.platform.startswith("linux") else ["False"] * 4
    assert out.stdout.split()[:4] == expected and float(out.stdout.split()[4]) == 64 * 2**20


@pytest.mark.slow
def test_dry_run_memory_estimate_counts_what_autograd_really_saves():
    from utils.Argparser import parse_args
    from utils.training.preflight import training_memory_estimate

    args = parse_args(["-c", "train", "-r", "x", "-d", "x", "-ds", "mvtec", "--img-size", "64",
                       "--unet-channel-num", "32", "--bs", "2"])
    torch.manual_seed(0)
    net = TransFusionUNet(UNetConfig(n_channels=32)).train()
    real = 16 * sum(p.numel() for p in net.parameters()) + _saved_bytes(net, size=64)  # batch 2 too
    assert training_memory_estimate(args) == pytest.approx(real, rel=0.01)
