"""The training objective (docs/method.md §5): anomaly, mask, normal-appearance and step-consistency terms."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from models.modes import depth_channels, rgb_channels
from models.transparency import TransparencyProcess


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    w2 = (g[:, None] @ g[None, :]).to(device=like.device, dtype=like.dtype)
    return w2.expand(channels, 1, size, size).contiguous()


def ssim_loss(a: torch.Tensor, b: torch.Tensor, window_size: int = 11, sigma: float = 1.5
              ) -> torch.Tensor:
    """1 − mean SSIM, Gaussian window, zero padding; the dynamic range comes from ``a``."""
    c = a.shape[1]
    max_val = 255.0 if a.max() > 128 else 1.0
    min_val = -1.0 if a.min() < -0.5 else 0.0
    dyn = max_val - min_val
    w = _gaussian_window(window_size, sigma, c, a)
    pad = window_size // 2
    mu_a = F.conv2d(a, w, padding=pad, groups=c)
    mu_b = F.conv2d(b, w, padding=pad, groups=c)
    mu_a2, mu_b2, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = F.conv2d(a * a, w, padding=pad, groups=c) - mu_a2
    var_b = F.conv2d(b * b, w, padding=pad, groups=c) - mu_b2
    cov = F.conv2d(a * b, w, padding=pad, groups=c) - mu_ab
    c1, c2 = (0.01 * dyn) ** 2, (0.03 * dyn) ** 2
    ssim_map = ((2 * mu_ab + c1) * (2 * cov + c2)) / ((mu_a2 + mu_b2 + c1) * (var_a + var_b + c2))
    return 1 - ssim_map.mean()


@dataclass
class LossTerms:
    total: torch.Tensor
    anomaly: torch.Tensor
    mask: torch.Tensor
    normal: torch.Tensor
    step: torch.Tensor

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("total", "anomaly", "mask", "normal", "step")}


def transfusion_loss(process: TransparencyProcess, x_t: torch.Tensor, t: torch.Tensor,
                     x0: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor,
                     eps_hat: torch.Tensor, x0_hat: torch.Tensor, mask_logits: torch.Tensor
                     ) -> LossTerms:
    """All four terms for one batch. ``eps`` is the masked anomaly (unscaled), ``mask`` M."""
    mode = process.mode
    eps_beta = process.beta.to(x0.device)[t.to(x0.device)].view(-1, 1, 1, 1) * eps
    r, d = rgb_channels(mode), depth_channels(mode)
    has_rgb, has_depth = r.stop > r.start, d.stop > d.start

    anomaly = x0.new_zeros(())
    if has_rgb:
        anomaly = anomaly + F.mse_loss(eps_hat[:, r], eps_beta[:, r])
    if has_depth:
        anomaly = (anomaly + F.mse_loss(eps_hat[:, d], eps_beta[:, d])
                   + ssim_loss(eps_hat[:, d], eps_beta[:, d]))

    prob = torch.sigmoid(mask_logits)
    mask_term = (5 * sigmoid_focal_loss(mask_logits, mask, alpha=0.25, gamma=2, reduction="mean")
                 + F.smooth_l1_loss(prob, mask))

    normal = x0.new_zeros(())
    for part in (r, d):
        if part.stop > part.start:
            normal = normal + ssim_loss(x0_hat[:, part], x0[:, part]) + F.l1_loss(x0_hat[:, part], x0[:, part])

    predicted_next = process.next_step(x_t, x0_hat, prob, eps_hat, t)
    target_next = process.next_step(x_t, x0, mask, eps_beta, t)
    step = F.mse_loss(predicted_next, target_next)

    return LossTerms(total=anomaly + mask_term + normal + step, anomaly=anomaly, mask=mask_term,
                     normal=normal, step=step)
