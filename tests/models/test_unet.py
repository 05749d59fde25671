"""The network's shapes and key layout, the step rule, and that training reduces the loss."""
from __future__ import annotations

import pytest
import torch

from models.losses import transfusion_loss
from models.transparency import TransparencyProcess, make_training_input
from models.unet import TransFusionUNet, UNetConfig, UpBlock
from tests.fixtures.helpers import REFERENCE, TINY_NET


def tiny(mode: str) -> TransFusionUNet:
    torch.manual_seed(0)
    n = 32 if mode != "rgbd" else 64
    return TransFusionUNet(UNetConfig(mode=mode, **{**TINY_NET, "n_channels": n}))


@pytest.mark.parametrize("mode,c", [("rgb", 3), ("d", 1), ("rgbd", 4)])
def test_head_shapes(mode, c):
    net = tiny(mode).eval()
    x = torch.randn(2, c + 1, 32, 32)
    eps, mean, logits = net(x, torch.tensor([3, 7]))
    assert eps.shape == (2, c, 32, 32) and mean.shape == (2, c, 32, 32) and logits.shape == (2, 1, 32, 32)
    assert all(torch.isfinite(o).all() for o in (eps, mean, logits))


def _tsv_state_dict(path):
    sd = {}
    for line in path.read_text().splitlines()[1:]:
        key, shape, dtype, _ = line.split("\t")
        dims = [int(v) for v in shape.strip("[]").split(",") if v.strip()]
        sd[key] = torch.empty(dims, dtype=getattr(torch, dtype), device="meta")
    return sd


@pytest.mark.parametrize("mode,n", [("rgb", 64), ("d", 64), ("rgbd", 128)])
def test_released_key_layout_loads(mode, n):
    sd = _tsv_state_dict(REFERENCE / f"official_state_dict_{mode}.tsv")
    with torch.device("meta"):
        net = TransFusionUNet(UNetConfig(mode=mode, n_channels=n))
    # strict: every key present, none extra, every shape equal
    net.load_state_dict({k.removeprefix("model."): v for k, v in sd.items()}, assign=True)


@pytest.mark.parametrize("mode", ["rgb", "d", "rgbd"])
def test_step_rule_recovers_previous_state_exactly(mode):
    c = {"rgb": 3, "d": 1, "rgbd": 4}[mode]
    proc = TransparencyProcess(20, mode)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, c, 16, 16, generator=g) * 2 - 1
    mask = (torch.rand(4, 1, 16, 16, generator=g) > 0.5).float()
    eps = mask * (torch.rand(4, c, 16, 16, generator=g) * 2 - 1)
    t = torch.tensor([1, 5, 12, 19])
    x_t = proc.q_sample(x0, eps, mask, t)
    eps_beta = proc.beta[t].view(-1, 1, 1, 1) * eps
    prev = proc.next_step(x_t, x0, mask, eps_beta, t)
    torch.testing.assert_close(prev, proc.q_sample(x0, eps, mask, t - 1), atol=1e-6, rtol=0)
    # at t = T-1 the anomaly fully covers its region (rgb channels)
    if mode != "d":
        full = proc.q_sample(x0, eps, mask, torch.full((4,), 19))
        torch.testing.assert_close(full[:, :3] * mask, eps[:, :3], atol=1e-6, rtol=0)


def test_condition_mask_is_empty_at_last_step():
    proc = TransparencyProcess(5, "rgb")
    x0 = torch.zeros(64, 3, 8, 8)
    ones = torch.ones(64, 1, 8, 8)
    batch = make_training_input(proc, x0, x0.clone(), ones, ones, torch.Generator().manual_seed(0), rotate_prob=0.0)
    last = batch.t == 4
    assert last.any() and (~last).any()
    assert batch.mask_c[last].sum() == 0 and (batch.mask_c[~last] == 1).all()
    assert set(batch.t.tolist()) <= {1, 2, 3, 4}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rgb", "d", "rgbd"])
def test_losses_finite_and_fall_on_a_fixed_batch(mode):
    c = {"rgb": 3, "d": 1, "rgbd": 4}[mode]
    net = tiny(mode).train()
    proc = TransparencyProcess(10, mode)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, c, 32, 32, generator=g) * 2 - 1
    mask = torch.zeros(4, 1, 32, 32)
    mask[:2, :, 8:20, 10:24] = 1
    eps = mask * (torch.rand(4, c, 32, 32, generator=g) * 2 - 1)
    t = torch.tensor([3, 8, 5, 2])
    x_t = proc.q_sample(x0, eps, mask, t)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        out = net(torch.cat((x_t, mask), 1), t)
        terms = transfusion_loss(proc, x_t, t, x0, eps, mask, *out)
        assert all(torch.isfinite(v) for v in (terms.total, terms.anomaly, terms.mask, terms.normal, terms.step))
        opt.zero_grad()
        terms.total.backward()
        opt.step()
        losses.append(terms.total.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_rgbd_up_block_regrouping_quirk():
    """Equal widths: the rgb half of the output ignores the depth quarters. Unequal widths
    (the last block of a level): equal-quarter cutting mixes the two branches, as released."""
    torch.manual_seed(0)
    t = torch.randn(1, 8)
    equal = UpBlock(64, 64, 8, has_attn=False, groups=2, two_branch=True).eval()
    prev, skip = torch.randn(1, 64, 4, 4), torch.randn(1, 64, 4, 4)
    prev2, skip2 = prev.clone(), skip.clone()
    prev2[:, 32:] += 1  # change depth halves only
    skip2[:, 32:] += 1
    out, out2 = equal(prev, skip, t), equal(prev2, skip2, t)
    torch.testing.assert_close(out[:, :32], out2[:, :32])
    assert not torch.allclose(out[:, 32:], out2[:, 32:])

    unequal = UpBlock(64, 32, 8, has_attn=False, groups=2, two_branch=True).eval()  # prev 64, skip 32
    prev, skip = torch.randn(1, 64, 4, 4), torch.randn(1, 32, 4, 4)
    prev2 = prev.clone()
    prev2[:, 32:] += 1  # the depth half of prev: channels 32..63 fall partly in the "rgb" quarters
    assert not torch.allclose(unequal(prev, skip, t)[:, :16], unequal(prev2, skip, t)[:, :16])
