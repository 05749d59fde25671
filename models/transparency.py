"""The transparency process (docs/method.md §3, §5 `next`, §6): a scheduler, kept apart from the network.

Its scoring of a batch (maps and image scores from the reverse pass) is models/scoring.py.

The forward process makes an anomaly A progressively *opaque* inside its mask M:
``x_t = (1 − M)·x0 + M·((1 − β_t)·x0 + β_t·A)`` for rgb, ``x_t = x0 + β_t·M·ε`` for depth.
The reverse process runs the network from the test image itself (t = T−2 … 1) and, step by
step, makes whatever it believes anomalous transparent again, so the normal appearance
shows through; the accumulated mask probabilities are the anomaly map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from models.modes import depth_channels, rgb_channels

# Network call: (concat(x, mask), t) -> (eps_hat, x0_hat, mask_logits)
Network = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class ReverseResult:
    x_final: torch.Tensor      # [B, C, S, S] the image with anomalies made transparent
    mask_disc: torch.Tensor    # [B, 1, S, S] accumulated mask probabilities, on the 18-step scale
    trajectory: list[dict[str, torch.Tensor]] | None = None
    steps_run: torch.Tensor | None = None  # [B] network passes per image (fewer with early stop)


# T: the reverse process runs T − 2 steps, so T < 3 leaves none; the upper bound keeps a
# mistyped or hostile T from allocating a schedule of millions of steps.
MIN_STEPS, MAX_STEPS = 3, 1000


def check_num_steps(num_steps: int) -> int:
    """``num_steps`` as T, or ValueError unless it is an integer in MIN_STEPS..MAX_STEPS."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not MIN_STEPS <= num_steps <= MAX_STEPS:
        raise ValueError(f"T (--diffusion-num-steps) must be an integer in {MIN_STEPS}..{MAX_STEPS}, got {num_steps!r}")
    return num_steps


class TransparencyProcess:
    """β schedule, forward blending, the one-step update and the reverse loop for one mode."""

    def __init__(self, num_steps: int = 20, mode: str = "rgb") -> None:
        self.num_steps = check_num_steps(num_steps)
        self.mode = mode
        self.beta = torch.linspace(0, 1, num_steps)  # float32, as the original
        self._rgb = rgb_channels(mode)
        self._depth = depth_channels(mode)

    def _beta_at(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.beta.to(like.device)[t.to(like.device)].to(like.dtype).view(-1, 1, 1, 1)

    def sample_t(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training steps, uniform in {1, …, T−1}."""
        return torch.randint(1, self.num_steps, (batch,), generator=generator)

    def q_sample(self, x0: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
        """x_t from the clean image, the masked anomaly ε = M·A (or M·depth change) and M."""
        b = self._beta_at(t, x0)
        x_t = x0.clone()
        r, d = self._rgb, self._depth
        x_t[:, r] = (1 - mask) * x0[:, r] + mask * ((1 - b) * x0[:, r] + b * eps[:, r])
        x_t[:, d] = x0[:, d] + b * mask * eps[:, d]
        return x_t

    def schedule(self, n_steps: int | None = None) -> list[tuple[int, int]]:
        """The reverse steps as (t, s) pairs, each jumping from t to s.

        None (the default): t = T−2 … 1, each to t − 1, as the original. ``n_steps`` = K visits
        t_i = round(T−2 − i·(T−3)/(K−1)), i = 0 … K−1 (K = 1: T−2 only), each jumping to
        s = t_{i+1} (the last to t_{K−1} − 1): a strided schedule, like DDIM's. K = T−2 is the
        default schedule exactly.
        """
        top = self.num_steps - 2
        if n_steps is None:
            return [(t, t - 1) for t in range(top, 0, -1)]
        if not 1 <= n_steps <= top:
            raise ValueError(f"the number of reverse steps must be in 1..{top}, got {n_steps}")
        span = (top - 1) / (n_steps - 1) if n_steps > 1 else 0.0
        visits = [int(math.floor(top - i * span + 0.5)) for i in range(n_steps)]  # round half up
        return [(t, s) for t, s in zip(visits, visits[1:] + [visits[-1] - 1])]

    def next_step(self, x_t: torch.Tensor, x0_hat: torch.Tensor, mask_prob: torch.Tensor,
                  eps_hat: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None) -> torch.Tensor:
        """x_s = x_t − (Δ/β_t)·M̃·ε̂ (+ Δ·M̃·x̂0 on rgb channels), M̃ = 1[mask_prob > 0.5],
        Δ = β_t − β_s with s = t − 1 unless given (a strided reverse schedule).

        With the true ε_β = β_t·ε, x0 and M this returns exactly the forward x_{t−1}.
        """
        beta = self.beta.to(x_t.device)
        tt = t.to(x_t.device)
        ss = tt - 1 if s is None else s.to(x_t.device)
        b_t = beta[tt].to(x_t.dtype).view(-1, 1, 1, 1)
        delta = (beta[tt] - beta[ss]).to(x_t.dtype).view(-1, 1, 1, 1)
        m = (mask_prob > 0.5).to(x_t.dtype)
        out = x_t - (delta / b_t) * m * eps_hat
        r = self._rgb
        if r.stop > r.start:
            out[:, r] = out[:, r] + delta * m * x0_hat[:, r]
        return out

    def _one_step(self, net: Network, x: torch.Tensor, mask: torch.Tensor, t: int, s: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(probabilities, logits, next x) of one reverse step for a batch."""
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        ss = None if s == t - 1 else torch.full_like(tt, s)
        eps_hat, x0_hat, logits = net(torch.cat((x, mask), dim=1), tt)
        # Threshold the float32 sigmoid (not the logit), like the original: tiny
        # positive logits round to exactly 0.5 and count as "not anomalous".
        prob = torch.sigmoid(logits.float())
        return prob, logits, self.next_step(x, x0_hat.to(x.dtype), prob, eps_hat.to(x.dtype), tt, ss)

    def _on_the_default_scale(self, acc: torch.Tensor, n_steps: int) -> torch.Tensor:
        """Sum of K probabilities × (T−2)/K / (T−1): divided by T − 1 although T − 2 steps ran
        (the original's normalisation), and a shorter schedule kept on the same scale."""
        top = self.num_steps - 2
        scaled = acc if n_steps == top else acc * (top / n_steps)
        return scaled / (self.num_steps - 1)

    @torch.no_grad()
    def reverse(self, net: Network, image: torch.Tensor, keep_trajectory: bool = False,
                n_steps: int | None = None, early_stop: int | None = None) -> ReverseResult:
        """Run the reverse schedule from the test image with an empty mask (docs/method.md §6).

        Defaults: t = T−2 … 1, the original's loop. ``n_steps``: the strided schedule of
        `schedule`. ``early_stop`` N: an image stops once the thresholded mask fed back has not
        changed for N consecutive steps; each of its remaining steps counts its last
        probabilities (see `_reverse_early_stop`).
        """
        pairs = self.schedule(n_steps)
        if early_stop is not None:
            return self._reverse_early_stop(net, image, pairs, early_stop)
        x = image
        mask = torch.zeros_like(image[:, :1])
        acc = torch.zeros_like(mask)
        traj: list[dict[str, torch.Tensor]] | None = [] if keep_trajectory else None
        for t, s in pairs:
            prob, logits, x_next = self._one_step(net, x, mask, t, s)
            if traj is not None:
                traj.append({"t": torch.full((image.shape[0],), t, dtype=torch.long, device=image.device),
                             "x_in": x, "mask_in": mask, "logits": logits, "x_out": x_next})
            acc = acc + prob
            mask = (prob > 0.5).to(x.dtype)
            x = x_next
        steps = torch.full((image.shape[0],), len(pairs), dtype=torch.long)
        return ReverseResult(x_final=x, mask_disc=self._on_the_default_scale(acc, len(pairs)), trajectory=traj,
                             steps_run=steps)

    def _reverse_early_stop(self, net: Network, image: torch.Tensor, pairs: list[tuple[int, int]],
                            patience: int) -> ReverseResult:
        """The reverse loop with per-image early stopping: only images still running go through
        the network (a batch runs until its last image stops), so each image gets what it
        would get alone; a stopped image keeps its x, and its remaining steps add its last
        probabilities to the sum."""
        b = image.shape[0]
        x = image.clone()
        mask = torch.zeros_like(image[:, :1])
        acc = torch.zeros_like(mask)
        unchanged = torch.zeros(b, dtype=torch.long, device=image.device)
        steps = torch.zeros(b, dtype=torch.long, device=image.device)
        active = torch.ones(b, dtype=torch.bool, device=image.device)
        for i, (t, s) in enumerate(pairs):
            idx = torch.nonzero(active).flatten()
            prob, _, x_next = self._one_step(net, x[idx], mask[idx], t, s)
            new_mask = (prob > 0.5).to(x.dtype)
            same = (new_mask == mask[idx]).flatten(1).all(dim=1)
            unchanged[idx] = torch.where(same, unchanged[idx] + 1, torch.zeros_like(unchanged[idx]))
            acc[idx] = acc[idx] + prob
            x[idx], mask[idx] = x_next, new_mask
            steps[idx] += 1
            stop = unchanged[idx] >= patience
            remaining = len(pairs) - i - 1
            if remaining and bool(stop.any()):
                acc[idx[stop]] = acc[idx[stop]] + remaining * prob[stop]
                active[idx[stop]] = False
            if not bool(active.any()):
                break
        return ReverseResult(x_final=x, mask_disc=self._on_the_default_scale(acc, len(pairs)),
                             steps_run=steps.cpu())


def rotate_nearest(x: torch.Tensor, angle: float) -> torch.Tensor:
    """Counter-clockwise rotation about the centre, nearest neighbour, zero fill, same size
    (torchvision ``rotate`` semantics, which the original's training augmentation uses)."""
    return TF.rotate(x, angle, interpolation=InterpolationMode.NEAREST, expand=False, fill=0)


@dataclass
class TrainingInput:
    t: torch.Tensor        # [B] steps in {1, …, T−1}
    x_t: torch.Tensor      # [B, C, S, S] network input image
    x0: torch.Tensor       # [B, C, S, S] clean image (target of x̂0)
    eps: torch.Tensor      # [B, C, S, S] masked anomaly ε (β_t·ε is the target of ε̂)
    mask: torch.Tensor     # [B, 1, S, S] M
    mask_c: torch.Tensor   # [B, 1, S, S] condition mask fed to the network


def make_training_input(process: TransparencyProcess, x0: torch.Tensor, eps: torch.Tensor,
                        mask: torch.Tensor, mask_c: torch.Tensor, generator: torch.Generator,
                        rotate_prob: float = 0.3, max_angle: float = 20.0) -> TrainingInput:
    """Draw t, blend x_t, empty M_c at t = T−1, and rotate 30% of the samples (docs/method.md §2, §3).

    All draws come from ``generator`` (CPU), so a resumed run repeats the same sequence.
    """
    b = x0.shape[0]
    t = process.sample_t(b, generator)
    draw_rotate = torch.rand(b, generator=generator) < rotate_prob
    angles = (torch.rand(b, generator=generator) * 2 - 1) * max_angle
    t_dev = t.to(x0.device)
    x_t = process.q_sample(x0, eps, mask, t_dev)
    mask_c = mask_c * (t_dev != process.num_steps - 1).to(mask_c.dtype).view(-1, 1, 1, 1)
    if bool(draw_rotate.any()):
        stacked = torch.cat((x_t, x0, eps, mask, mask_c), dim=1)
        for i in torch.nonzero(draw_rotate).flatten().tolist():
            stacked[i] = rotate_nearest(stacked[i], float(angles[i]))
        c = x0.shape[1]
        x_t, x0, eps = stacked[:, :c], stacked[:, c:2 * c], stacked[:, 2 * c:3 * c]
        mask, mask_c = stacked[:, 3 * c:3 * c + 1], stacked[:, 3 * c + 1:]
    return TrainingInput(t=t_dev, x_t=x_t, x0=x0, eps=eps, mask=mask, mask_c=mask_c)
