"""Equivalence with the original implementation, on tests/fixtures/reference/reference_rgb.pt.xz.

Tolerances are those suggested by tests/fixtures/reference/README.md (its observed noise floor).
"""
from __future__ import annotations

import copy

import pytest
import torch

from models.losses import transfusion_loss
from models.scoring import anomaly_maps
from models.transparency import TransparencyProcess, rotate_nearest
from models.unet import TransFusionUNet, UNetConfig
from tests.fixtures.helpers import load_reference


@pytest.fixture(scope="module")
def ref():
    return load_reference()


@pytest.fixture(scope="module")
def net(ref):
    model = TransFusionUNet(UNetConfig(mode="rgb", n_channels=32))
    model.load_state_dict({k.removeprefix("model."): v for k, v in ref["state_dict"].items()})
    return model.eval()


PROCESS = TransparencyProcess(20, "rgb")


def test_forward_at_t5(ref, net):
    with torch.no_grad():
        eps, mean, logits = net(torch.cat((ref["x"], ref["a_mask_in"]), 1), ref["a_t"])
        nxt = PROCESS.next_step(ref["x"], mean, torch.sigmoid(logits), eps, ref["a_t"])
    torch.testing.assert_close(eps, ref["a_predicted_noise"], atol=1e-4, rtol=0)
    torch.testing.assert_close(mean, ref["a_predicted_mean"], atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, ref["a_predicted_mask"], atol=1e-4, rtol=0)
    torch.testing.assert_close(nxt, ref["a_next_x"], atol=1e-4, rtol=0)


def test_teacher_forced_reverse_steps(ref, net):
    with torch.no_grad():
        for i in range(18):
            t = ref["b_traj_t"][i:i + 1]
            x_in, m_in = ref["b_traj_x_in"][i:i + 1], ref["b_traj_mask_in"][i:i + 1]
            eps, mean, logits = net(torch.cat((x_in, m_in), 1), t)
            x_out = PROCESS.next_step(x_in, mean, torch.sigmoid(logits), eps, t)
            torch.testing.assert_close(logits, ref["b_traj_mask_logits"][i:i + 1], atol=1e-4, rtol=0)
            torch.testing.assert_close(x_out, ref["b_traj_x_out"][i:i + 1], atol=1e-4, rtol=0)


def test_free_running_pass_and_score(ref, net):
    result = PROCESS.reverse(net, ref["x"], keep_trajectory=True)
    assert [int(s["t"]) for s in result.trajectory] == ref["b_traj_t"].tolist()
    for i, step in enumerate(result.trajectory):  # no threshold flips, else judge by teacher forcing
        assert torch.equal(step["mask_in"], ref["b_traj_mask_in"][i:i + 1]), f"mask flip at step {i}"
    torch.testing.assert_close(result.x_final, ref["b_x_final"], atol=1e-4, rtol=0)
    torch.testing.assert_close(result.mask_disc, ref["b_all_masks"], atol=1e-4, rtol=0)
    maps = anomaly_maps(ref["x"], result, "rgb", kernel_size=ref["c_kernel_size"], weight=ref["c_weight"])
    torch.testing.assert_close(maps.mask_recon[0], ref["b_mask_recon"].double(), atol=1e-4, rtol=0)
    torch.testing.assert_close(maps.final[0], ref["c_mask_final"].double(), atol=1e-4, rtol=0)
    assert maps.scores.item() == pytest.approx(ref["c_score"], abs=1e-4)


def test_training_losses_and_gradients(ref, net):
    model = copy.deepcopy(net).train()
    t = ref["d_t"]
    x_t = PROCESS.q_sample(ref["d_x0"], ref["d_eps"], ref["d_mask"], t)
    eps, mean, logits = model(torch.cat((x_t, ref["d_mask_c"]), 1), t)
    terms = transfusion_loss(PROCESS, x_t, t, ref["d_x0"], ref["d_eps"], ref["d_mask"], eps, mean, logits)
    for name, key in [("total", "d_loss_total"), ("anomaly", "d_loss_anomaly"), ("mask", "d_loss_mask"),
                      ("normal", "d_loss_normal"), ("step", "d_loss_img")]:
        assert getattr(terms, name).item() == pytest.approx(ref[key].item(), rel=1e-4), name
    terms.total.backward()
    grad = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
    assert grad.item() == pytest.approx(ref["d_grad_global_l2"].item(), rel=1e-4)
    torch.testing.assert_close(model.final_seg.conv.bias.grad, ref["d_grad_final_seg_conv_bias"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.final_seg.norm.running_mean, ref["d_bn_running_mean_after"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.final_seg.norm.running_var, ref["d_bn_running_var_after"], rtol=1e-4, atol=1e-6)


def test_rotation_semantics(ref):
    for j, angle in enumerate(ref["e_rot_angles"].tolist()):
        out = rotate_nearest(ref["e_rot_in"], angle)
        torch.testing.assert_close(out, ref["e_rot_out"][j], atol=1e-6, rtol=0)
