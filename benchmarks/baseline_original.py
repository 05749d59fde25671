"""A plain reimplementation of the original's attention and reverse loop, to benchmark against.

The original TransFusion (upstream 4e8e961) uses the labml.ai DDPM UNet, whose attention
materialises the full [B, HW, HW, heads] score tensor with two einsums, and samples with a
plain Python loop under ``torch.no_grad()``. This module rebuilds that on top of this
project's network, with the same parameters, so that time and memory can be compared:

- ``make_baseline(net)``: a deep copy of a ``TransFusionUNet`` whose ``SelfAttention``
  modules compute attention the original way (einsum → softmax → einsum, heads = 1,
  scale = C ** -0.5). Parameter names and values are unchanged.
- ``baseline_reverse(net, process, image)``: the original's sampler loop (t = T−2 … 1,
  ``torch.no_grad()``, not ``inference_mode``), returning the same ``ReverseResult``.
- ``baseline_anomaly_maps(image, result, ...)``: the original's scoring, per image in
  numpy / ``scipy.signal.convolve2d`` (float64).

    python benchmarks/baseline_original.py          # agreement check, small input

The check compares baseline and current outputs (network outputs, one reverse pass and
the anomaly map) and, from ``tests/fixtures/reference/reference_rgb.pt.xz``, the
baseline against the original's stored outputs; tolerance 1e-4 throughout.
"""
from __future__ import annotations

import argparse
import copy
import io
import lzma
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.signal import convolve2d  # at import, so that no timed pass pays for it
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models.modes import depth_channels, rgb_channels  # noqa: E402
from models.scoring import AnomalyMaps  # noqa: E402
from models.transparency import ReverseResult, TransparencyProcess  # noqa: E402
from models.unet import SelfAttention, TransFusionUNet, UNetConfig  # noqa: E402


class OriginalSelfAttention(SelfAttention):
    """labml.ai ``AttentionBlock.forward`` with n_heads = 1, d_k = C (its unused norm omitted)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, n_channels, height, width = x.shape
        n_heads, d_k = 1, n_channels
        scale = d_k ** -0.5
        x = x.view(batch_size, n_channels, -1).permute(0, 2, 1)
        qkv = self.projection(x).view(batch_size, -1, n_heads, 3 * d_k)
        q, k, v = torch.chunk(qkv, 3, dim=-1)
        attn = torch.einsum('bihd,bjhd->bijh', q, k) * scale
        attn = attn.softmax(dim=2)
        res = torch.einsum('bijh,bjhd->bihd', attn, v)
        res = res.view(batch_size, -1, n_heads * d_k)
        res = self.output(res)
        res += x
        res = res.permute(0, 2, 1).view(batch_size, n_channels, height, width)
        return res


def make_baseline(net: nn.Module, inplace: bool = False) -> nn.Module:
    """Copy of ``net`` with every ``SelfAttention`` computing attention the original way.

    ``inplace=True`` converts ``net`` itself (no second copy of the weights in memory).
    """
    base = net if inplace else copy.deepcopy(net)
    n = 0
    for m in base.modules():
        if type(m) is SelfAttention:
            m.__class__ = OriginalSelfAttention  # same parameters, other forward
            n += 1
    if n == 0:
        raise ValueError("the network has no SelfAttention module to replace")
    return base


def baseline_reverse(net: nn.Module, process: TransparencyProcess, image: torch.Tensor
                     ) -> ReverseResult:
    """The original's sampler: t = T−2 … 1 from the image, empty mask, under ``no_grad``."""
    beta = process.beta.to(image.device)
    r, d = rgb_channels(process.mode), depth_channels(process.mode)
    b = image.shape[0]
    with torch.no_grad():
        xt = image
        mask = torch.zeros_like(image[:, :1])
        acc = torch.zeros_like(mask)
        for t in range(process.num_steps - 2, 0, -1):
            tt = torch.full((b,), t, dtype=torch.long, device=image.device)
            noise, mean, logits = net(torch.cat((xt, mask), dim=1), tt)
            prob = torch.sigmoid(logits)
            m = (prob > 0.5).float()
            delta = beta[t] - beta[t - 1]
            nxt = xt - (delta / beta[t]) * m * noise
            if r.stop > r.start:
                nxt[:, r] = nxt[:, r] + delta * m * mean[:, r]
            if d.stop > d.start:  # depth: no mean term
                nxt[:, d] = xt[:, d] - (delta / beta[t]) * m * noise[:, d]
            acc = acc + prob
            mask = m
            xt = nxt
    return ReverseResult(x_final=xt, mask_disc=acc / (process.num_steps - 1))


def baseline_anomaly_maps(image: torch.Tensor, result: ReverseResult, mode: str,
                          kernel_size: int = 7, weight: float = 0.95) -> AnomalyMaps:
    """The original's post-processing, one image at a time in numpy (scipy convolve2d)."""
    r = rgb_channels(mode)
    kern = np.ones((kernel_size, kernel_size)) / kernel_size ** 2
    finals, scores, discs, recons = [], [], [], []
    for i in range(image.shape[0]):
        inp = image[i].float().cpu().numpy().copy()
        rec = result.x_final[i].float().cpu().numpy().copy()
        inp[r] = np.clip(inp[r] / 2 + 0.5, 0, 1)
        rec[r] = np.clip(rec[r] / 2 + 0.5, 0, 1)
        recon = ((inp - rec) ** 2).mean(axis=0).astype(np.float64)
        disc = result.mask_disc[i, 0].cpu().numpy().astype(np.float64)
        final = weight * convolve2d(disc, kern, mode="same") + (1 - weight) * convolve2d(recon, kern, mode="same")
        finals.append(final)
        scores.append(final.max())
        discs.append(disc)
        recons.append(recon)
    t = lambda a: torch.from_numpy(np.stack(a))  # noqa: E731
    return AnomalyMaps(final=t(finals), scores=torch.tensor(scores, dtype=torch.float64),
                       mask_disc=t(discs), mask_recon=t(recons))


def baseline_score(net: nn.Module, process: TransparencyProcess, image: torch.Tensor,
                   kernel_size: int = 7, weight: float = 0.95) -> AnomalyMaps:
    """Baseline counterpart of ``utils.evaluation.score_batch``."""
    return baseline_anomaly_maps(image, baseline_reverse(net, process, image), process.mode,
                                 kernel_size, weight)


# --------------------------------------------------------------------------------------- check

def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def _report(out: dict[str, float], atol: float, verbose: bool, who: str, title: str) -> dict[str, float]:
    """Print the max |Δ| of each compared quantity; raise if any exceeds ``atol``."""
    if verbose:
        print(title)
        for k, v in out.items():
            print(f"  max|Δ| {k:18s} {v:.3g}")
    bad = {k: v for k, v in out.items() if not v <= atol}
    if bad:
        raise AssertionError(f"{who} disagree beyond {atol}: {bad}")
    return out


def load_reference(path: Path) -> tuple[dict, TransFusionUNet]:
    """``reference_rgb.pt.xz``: the stored tensors, and the 32-channel rgb network with its
    weights (stored as integer codes times powers of two) loaded."""
    ref = torch.load(io.BytesIO(lzma.open(path).read()), weights_only=True)
    exp2 = ref["state_dict_exp2"]
    sd = {k.removeprefix("model."): (c.float() * 2.0 ** exp2[k]) if k in exp2 else c
          for k, c in ref["state_dict_codes"].items()}
    net = TransFusionUNet(UNetConfig(mode="rgb", n_channels=32))
    net.load_state_dict(sd)
    return ref, net


def check_agreement(size: int = 32, batch: int = 2, n_channels: int = 32, atol: float = 1e-4,
                    verbose: bool = True) -> dict[str, float]:
    """Baseline vs current on a small random network and input; raises if beyond ``atol``."""
    from models.scoring import score_batch

    torch.manual_seed(0)
    net = TransFusionUNet(UNetConfig(n_channels=n_channels)).eval()
    base = make_baseline(net).eval()
    process = TransparencyProcess(20, "rgb")
    g = torch.Generator().manual_seed(1)
    image = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    mask = (torch.rand(batch, 1, size, size, generator=g) > 0.5).float()
    t = torch.tensor([5] * batch)
    out: dict[str, float] = {}
    with torch.no_grad():
        for name, a, b in zip(("eps", "x0", "logits"), net(torch.cat((image, mask), 1), t),
                              base(torch.cat((image, mask), 1), t)):
            out[f"forward {name}"] = _maxdiff(a, b)
    cur_res = process.reverse(net, image, keep_trajectory=True)
    base_res = baseline_reverse(base, process, image)
    out["reverse x_final"] = _maxdiff(cur_res.x_final, base_res.x_final)
    out["reverse mask_disc"] = _maxdiff(cur_res.mask_disc, base_res.mask_disc)
    cur_maps, _ = score_batch(net, process, image)
    base_maps = baseline_score(base, process, image)
    out["anomaly map"] = _maxdiff(cur_maps.final, base_maps.final)
    out["image score"] = _maxdiff(cur_maps.scores, base_maps.scores)
    return _report(out, atol, verbose, "baseline and current",
                   f"baseline vs current, random n_channels={n_channels} net, {batch}x3x{size}x{size}:")


def check_reference(atol: float = 1e-4, verbose: bool = True) -> dict[str, float] | None:
    """Baseline vs the original's stored outputs (``reference_rgb.pt.xz``), if present."""
    path = ROOT / "tests" / "fixtures" / "reference" / "reference_rgb.pt.xz"
    if not path.exists():
        if verbose:
            print(f"(no {path}; reference check skipped)")
        return None
    ref, net = load_reference(path)
    base = make_baseline(net.eval()).eval()
    process = TransparencyProcess(20, "rgb")
    res = baseline_reverse(base, process, ref["x"])
    maps = baseline_anomaly_maps(ref["x"], res, "rgb", int(ref["c_kernel_size"]), float(ref["c_weight"]))
    out = {"x_final": _maxdiff(res.x_final, ref["b_x_final"]),
           "mask_disc": _maxdiff(res.mask_disc, ref["b_all_masks"]),
           "anomaly map": _maxdiff(maps.final[0], ref["c_mask_final"]),
           "image score": abs(float(maps.scores[0]) - float(ref["c_score"]))}
    return _report(out, atol, verbose, "baseline and the reference",
                   "baseline vs the original's stored outputs (reference_rgb.pt.xz, 64 px):")


def main() -> None:
    p = argparse.ArgumentParser(description="check that the baseline agrees with the current code")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--n-channels", type=int, default=32)
    args = p.parse_args()
    check_agreement(args.size, args.batch, args.n_channels)
    check_reference()
    print("OK: agreement within 1e-4")


if __name__ == "__main__":
    main()
