"""Scoring a batch (docs/method.md §6): the reverse process, then the anomaly maps and image scores.

This is the pipeline that sits beside the scheduler (models/transparency.py), as a diffusers
pipeline sits beside its scheduler: evaluation, prediction and the benchmarks all call
`score_batch`; `ScoringOptions` carries the scoring flags as one object.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.modes import rgb_channels
from models.runtime import RuntimeOptions
from models.transparency import Network, ReverseResult, TransparencyProcess
from utils.core.errors import TransFusionError


@dataclass(frozen=True)
class ScoringOptions:
    """``kernel_size``: side of the mean filter smoothing both maps; ``weight``: w of
    final = w·mask_disc + (1 − w)·mask_recon; ``eval_steps`` K: a strided reverse schedule of K
    steps (None: all T − 2, the original's); ``early_stop`` N: stop an image once its mask has
    not changed for N steps (None: never). Defaults are the paper's."""

    kernel_size: int = 7
    weight: float = 0.95
    eval_steps: int | None = None
    early_stop: int | None = None

    def schedule(self) -> dict[str, int | None]:
        """The step options, as stored beside a threshold (one is only valid for its schedule)."""
        return {"eval_steps": self.eval_steps, "early_stop": self.early_stop}


# The paper's scoring (kernel 7, weight 0.95, every reverse step): the one home of these defaults.
DEFAULT_SCORING = ScoringOptions()


def to_display_range(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Map rgb channels from [−1, 1] to [0, 1] (clipped); depth channels stay as they are."""
    out = x.clone()
    r = rgb_channels(mode)
    out[:, r] = (x[:, r] / 2 + 0.5).clamp(0, 1)
    return out


def box_smooth(maps: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """k×k mean filter with zero padding and 'same' output size (scipy.signal.convolve2d's
    'same' alignment, so even sizes pad one more on the leading side). maps: [B, 1, H, W]."""
    k = kernel_size
    padded = F.pad(maps, (k // 2, (k - 1) // 2, k // 2, (k - 1) // 2))
    weight = torch.full((1, 1, k, k), 1.0 / (k * k), dtype=maps.dtype, device=maps.device)
    return F.conv2d(padded, weight)


def map_at_size(anomaly_map: torch.Tensor | np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """One H'×W' anomaly map resized to ``hw`` = (H, W) with bilinear interpolation, pixel centres
    aligned (``align_corners=False``): the rule that takes a map from the working size back to its
    image's own size (`Detector`'s ``input_size_maps``, MVTec AD 2's native-resolution metrics).
    float32 or float64 in (tensor or array), a numpy array of the same dtype out."""
    t = torch.as_tensor(anomaly_map)
    if t.dim() != 2 or t.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"map_at_size takes one float32/float64 map [H, W], got {t.dtype} {list(t.shape)}")
    h, w = (int(v) for v in hw)
    if h < 1 or w < 1:
        raise ValueError(f"map_at_size: the size must be positive (H, W), got {tuple(hw)}")
    return F.interpolate(t[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0].cpu().numpy()


@dataclass
class AnomalyMaps:
    final: torch.Tensor        # [B, H, W] float64: the anomaly map
    scores: torch.Tensor       # [B] float64: max of the final map
    mask_disc: torch.Tensor    # [B, H, W] float64, unsmoothed
    mask_recon: torch.Tensor   # [B, H, W] float64, unsmoothed
    steps_run: torch.Tensor | None = None  # [B] reverse steps each image ran

    def check_finite(self, names: Sequence[str]) -> None:
        """A one-line error naming the first image (of ``names``, in batch order) whose map is NaN/inf."""
        bad = ~torch.isfinite(self.final.flatten(1)).all(dim=1)
        if bool(bad.any()):
            first = [n for n, b in zip(names, bad.tolist()) if b]
            raise TransFusionError(
                f"the anomaly map of {first[0]} is not finite (NaN/inf) — the checkpoint is probably "
                f"diverged or corrupt ({len(first)} image(s) in this batch); re-train or use another checkpoint")


def anomaly_maps(image: torch.Tensor, result: ReverseResult, mode: str,
                 kernel_size: int = DEFAULT_SCORING.kernel_size, weight: float = DEFAULT_SCORING.weight) -> AnomalyMaps:
    """docs/method.md §6 scoring: smoothed w·mask_disc + (1−w)·mask_recon, score = max, in float64."""
    inp = to_display_range(image.float(), mode)
    rec = to_display_range(result.x_final.float(), mode)
    recon = ((inp - rec) ** 2).mean(dim=1, keepdim=True).double()
    disc = result.mask_disc.double()
    final = weight * box_smooth(disc, kernel_size) + (1 - weight) * box_smooth(recon, kernel_size)
    final = final[:, 0]
    return AnomalyMaps(final=final, scores=final.flatten(1).amax(dim=1),
                       mask_disc=disc[:, 0], mask_recon=recon[:, 0], steps_run=result.steps_run)


def score_batch(net: Network, process: TransparencyProcess, images: torch.Tensor,
                scoring: ScoringOptions = DEFAULT_SCORING, runtime: RuntimeOptions = RuntimeOptions(),
                keep_reconstruction: bool = False) -> tuple[AnomalyMaps, torch.Tensor | None]:
    """Reverse process + docs/method.md §6 scoring for one batch already on the network's device.

    Returns the maps and, when asked, the reconstruction (the image with its anomalies made
    transparent). A batch gives the same numbers as one image at a time (within 1e-6)."""
    with torch.inference_mode():
        with runtime.autocast(images.device):
            result = process.reverse(net, images, n_steps=scoring.eval_steps, early_stop=scoring.early_stop)
        maps = anomaly_maps(images, result, process.mode, scoring.kernel_size, scoring.weight)
    return maps, (result.x_final if keep_reconstruction else None)
