"""The TransFusion network: a time-conditioned UNet with three heads (docs/method.md §4).

Only the network lives here; the transparency process that drives it is in
`models/transparency.py`. Module and parameter names mirror the released
checkpoints (`tests/fixtures/reference/official_state_dict_<mode>.tsv`, minus the
leading ``model.``), so those files load with `load_state_dict` unchanged.

Modes:
- ``rgb`` / ``d``: one branch, image channels 3 / 1.
- ``rgbd``: two branches (rgb half, depth half) inside every layer: grouped
  convolutions (groups=2), separate attention per half, shared GroupNorm and
  time embedding, exactly as the released rgbd weights expect.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.modes import IMAGE_CHANNELS, is_two_branch
from models.recompute import Assemble, norm_act_conv, norm_act_conv_with_shortcut


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the UNet. Defaults are the paper's rgb network."""

    mode: str = "rgb"
    n_channels: int = 64
    ch_mults: tuple[int, ...] = (1, 2, 2, 2)  # applied cumulatively per level
    attn: tuple[bool, ...] = (False, False, True, True)
    group_conv: tuple[bool, ...] = (True, True, True, True)  # used in rgbd only
    n_blocks: int = 2

    def __post_init__(self) -> None:
        if self.mode not in IMAGE_CHANNELS:
            raise ValueError(f"mode must be one of {sorted(IMAGE_CHANNELS)}, got {self.mode!r}")
        n = len(self.ch_mults)
        if len(self.attn) != n or len(self.group_conv) != n:
            raise ValueError(
                f"ch_mults, attn and group_conv need one value per level; "
                f"got {len(self.ch_mults)}, {len(self.attn)} and {len(self.group_conv)}")
        if n == 0 or self.n_blocks < 1 or any(m < 1 for m in self.ch_mults):
            raise ValueError(f"a UNet needs at least one level and one block per level, with "
                             f"multipliers >= 1; got ch_mults {list(self.ch_mults)}, n_blocks {self.n_blocks}")
        widths = [self.n_channels, *self.level_widths]
        if any(w % 32 for w in widths):
            raise ValueError(f"every level width must be a multiple of 32 (GroupNorm(32)); "
                             f"n_channels {self.n_channels} with ch_mults {list(self.ch_mults)} gives {widths}")
        if self.two_branch and self.n_channels % 16:
            raise ValueError("rgbd needs n_channels divisible by 16 (two branches, GroupNorm(8))")

    @property
    def level_widths(self) -> tuple[int, ...]:
        """Output width of each level (both branches together in rgbd)."""
        widths, w = [], self.n_channels
        for m in self.ch_mults:
            w *= m
            widths.append(w)
        return tuple(widths)

    @property
    def image_channels(self) -> int:
        return IMAGE_CHANNELS[self.mode]

    @property
    def two_branch(self) -> bool:
        return is_two_branch(self.mode)


def _groups(cfg: UNetConfig, level: int) -> int:
    return 2 if cfg.two_branch and cfg.group_conv[level] else 1


class RowPositionEncoding(nn.Module):
    """One extra input channel whose value at row i is sin(i * inv_freq), constant along rows.

    The released checkpoints store ``inv_freq`` (= [1.0]) as a buffer under
    ``pos_emb.penc.inv_freq``; the nested ``penc`` module only exists to keep that name.
    """

    def __init__(self) -> None:
        super().__init__()
        self.penc = nn.Module()
        self.penc.register_buffer("inv_freq", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        rows = torch.arange(h, device=x.device, dtype=self.penc.inv_freq.dtype)
        col = torch.sin(rows * self.penc.inv_freq[0]).to(x.dtype)
        return col.view(1, 1, h, 1).expand(b, 1, h, w)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of the step (dim n_channels) then Linear→SiLU→Linear to 4·n_channels."""

    def __init__(self, n_channels: int) -> None:
        super().__init__()
        self.n_channels = n_channels
        self.linear_1 = nn.Linear(n_channels, 4 * n_channels)
        self.linear_2 = nn.Linear(4 * n_channels, 4 * n_channels)

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        half = self.n_channels // 2
        freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32)
                          * -(math.log(10_000) / (half - 1)))
        args = t.float()[:, None] * freqs[None, :]
        return torch.cat((args.sin(), args.cos()), dim=1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = self.sinusoid(t).to(self.linear_1.weight.dtype)
        return self.linear_2(F.silu(self.linear_1(emb)))


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, time_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(32, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, groups=groups)
        self.norm2 = nn.GroupNorm(32, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, groups=groups)
        self.shortcut = (nn.Conv2d(in_ch, out_ch, 1, groups=groups) if in_ch != out_ch
                         else nn.Identity())
        # The released weights were trained with the embedding added straight after its
        # Linear (no activation in front of it); keep it that way.
        self.time_emb = nn.Linear(time_ch, out_ch)
        self.recompute = True  # see TransFusionUNet.set_recompute

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = norm_act_conv(x, self.norm1, self.conv1, self.recompute)
        return self._second_half(h, self.shortcut(x), t)

    def forward_parts(self, parts: tuple[torch.Tensor, ...], assemble: Assemble, t: torch.Tensor) -> torch.Tensor:
        """The block on ``assemble(*parts)`` (the up path's concatenation) without keeping that
        concatenation for backward when recomputing (models/recompute.py). Up-path blocks
        always widen (prev + skip → out), so their shortcut is a 1×1 conv."""
        h, short = norm_act_conv_with_shortcut(parts, assemble, self.norm1, self.conv1, self.shortcut,
                                               self.recompute)
        return self._second_half(h, short, t)

    def _second_half(self, h: torch.Tensor, short: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = h + self.time_emb(t)[:, :, None, None]
        h = norm_act_conv(h, self.norm2, self.conv2, self.recompute)
        return h + short


class SelfAttention(nn.Module):
    """Single-head self-attention over all positions, no normalisation, residual output."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.projection = nn.Linear(ch, 3 * ch)
        self.output = nn.Linear(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = self.projection(seq).chunk(3, dim=-1)
        # SDPA's default scale is 1/sqrt(C), the original's d_k ** -0.5 with d_k = C.
        res = F.scaled_dot_product_attention(q, k, v)
        res = self.output(res) + seq
        return res.transpose(1, 2).reshape(b, c, h, w)


class _AttnHolder(nn.Module):
    """Mixin that owns ``attn`` (and ``attn_d`` for the depth half in rgbd)."""

    def _make_attn(self, ch: int, has_attn: bool, two_branch: bool) -> None:
        self.two_branch = two_branch
        if not has_attn:
            self.attn = None
            self.attn_d = None
            return
        if two_branch:
            self.attn = SelfAttention(ch // 2)
            self.attn_d = SelfAttention(ch // 2)
        else:
            self.attn = SelfAttention(ch)
            self.attn_d = None

    def _apply_attn(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn is None:
            return x
        if self.attn_d is None:
            return self.attn(x)
        rgb, depth = x.chunk(2, dim=1)
        return torch.cat((self.attn(rgb), self.attn_d(depth)), dim=1)


class DownBlock(_AttnHolder):
    def __init__(self, in_ch: int, out_ch: int, time_ch: int, has_attn: bool, groups: int,
                 two_branch: bool) -> None:
        super().__init__()
        self.res = ResidualBlock(in_ch, out_ch, time_ch, groups)
        self._make_attn(out_ch, has_attn, two_branch)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._apply_attn(self.res(x, t))


class UpBlock(_AttnHolder):
    def __init__(self, in_ch: int, out_ch: int, time_ch: int, has_attn: bool, groups: int,
                 two_branch: bool) -> None:
        super().__init__()
        self.res = ResidualBlock(in_ch + out_ch, out_ch, time_ch, groups)
        self._make_attn(out_ch, has_attn, two_branch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._apply_attn(self.res.forward_parts((x, skip), self._concat, t))

    def _concat(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        h = torch.cat((x, skip), dim=1)
        if self.two_branch:
            # The released rgbd network regroups (prev, skip) into (rgb, depth) halves by
            # cutting the concatenation into four EQUAL quarters. Where prev and skip differ
            # in width (the last block of levels 1-3) this mixes channels of the two
            # branches; the released weights were trained that way, so we reproduce it.
            q = h.chunk(4, dim=1)
            h = torch.cat((q[0], q[2], q[1], q[3]), dim=1)
        return h


class MiddleBlock(_AttnHolder):
    def __init__(self, ch: int, time_ch: int, groups: int, two_branch: bool) -> None:
        super().__init__()
        self.res1 = ResidualBlock(ch, ch, time_ch, groups)
        self._make_attn(ch, True, two_branch)
        self.res2 = ResidualBlock(ch, ch, time_ch, groups)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.res2(self._apply_attn(self.res1(x, t)), t)


class Downsample(nn.Module):
    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SegmentationHead(nn.Module):
    """BatchNorm → SiLU → conv3×3 to one channel of mask logits."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(ch)
        self.conv = nn.Conv2d(ch, 1, 3, padding=1)
        self.recompute = True  # see TransFusionUNet.set_recompute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_act_conv(x, self.norm, self.conv, self.recompute)


class TransFusionUNet(nn.Module):
    """UNet(concat(x_t, M_c), t) → (ε̂ anomaly appearance, x̂0 normal appearance, mask logits)."""

    def __init__(self, cfg: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.n_channels
        time_ch = 4 * n
        two = cfg.two_branch
        self.pos_emb = RowPositionEncoding()
        if two:
            # each branch sees (its image channels, condition mask, position channel)
            self.image_proj_rgb = nn.Conv2d(3 + 2, n // 2, 3, padding=1)
            self.image_proj_d = nn.Conv2d(1 + 2, n // 2, 3, padding=1)
        else:
            self.image_proj = nn.Conv2d(cfg.image_channels + 2, n, 3, padding=1)
        self.time_emb = TimeEmbedding(n)

        levels = len(cfg.ch_mults)
        down: list[nn.Module] = []
        in_ch = n
        for i in range(levels):
            out_ch = in_ch * cfg.ch_mults[i]
            for _ in range(cfg.n_blocks):
                down.append(DownBlock(in_ch, out_ch, time_ch, cfg.attn[i], _groups(cfg, i), two))
                in_ch = out_ch
            if i < levels - 1:
                down.append(Downsample(in_ch, _groups(cfg, i)))
        self.down = nn.ModuleList(down)

        self.middle = MiddleBlock(in_ch, time_ch, _groups(cfg, levels - 1), two)

        up: list[nn.Module] = []
        for i in reversed(range(levels)):
            out_ch = in_ch
            for _ in range(cfg.n_blocks):
                up.append(UpBlock(in_ch, out_ch, time_ch, cfg.attn[i], _groups(cfg, i), two))
            out_ch = in_ch // cfg.ch_mults[i]
            up.append(UpBlock(in_ch, out_ch, time_ch, cfg.attn[i], _groups(cfg, i), two))
            in_ch = out_ch
            if i > 0:
                up.append(Upsample(in_ch, _groups(cfg, i)))
        self.up = nn.ModuleList(up)

        self.norm = nn.GroupNorm(8, n)
        if two:
            self.final = nn.Conv2d(n // 2, 3, 3, padding=1)
            self.final_mean = nn.Conv2d(n // 2, 3, 3, padding=1)
            self.final_d = nn.Conv2d(n // 2, 1, 3, padding=1)
            self.final_mean_d = nn.Conv2d(n // 2, 1, 3, padding=1)
        else:
            self.final = nn.Conv2d(n, cfg.image_channels, 3, padding=1)
            self.final_mean = nn.Conv2d(n, cfg.image_channels, 3, padding=1)
        self.final_seg = SegmentationHead(n)
        self.recompute = True

    def set_recompute(self, enabled: bool) -> "TransFusionUNet":
        """Whether training keeps norm→SiLU outputs (False) or recomputes them in backward (True).

        Both give bit-identical outputs and gradients (models/recompute.py); True, the default,
        keeps fewer activation bytes for about the same step time (docs/performance.md).
        """
        for m in self.modules():
            if hasattr(m, "recompute"):
                m.recompute = enabled
        return self

    def forward(self, x_and_mask: torch.Tensor, t: torch.Tensor, extra_emb: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x_and_mask``: [B, C_img + 1, S, S] (image then condition mask); ``t``: [B] steps;
        ``extra_emb``: [B, 4·n_channels] added to the step embedding (this project's class
        conditioning, models/conditioning.py; None: the paper's network)."""
        pos = self.pos_emb(x_and_mask)
        if self.cfg.two_branch:
            rgb, depth, mask = x_and_mask[:, :3], x_and_mask[:, 3:4], x_and_mask[:, 4:5]
            x = torch.cat((self.image_proj_rgb(torch.cat((rgb, mask, pos), 1)),
                           self.image_proj_d(torch.cat((depth, mask, pos), 1))), 1)
        else:
            x = self.image_proj(torch.cat((x_and_mask, pos), 1))
        temb = self.time_emb(t)
        if extra_emb is not None:
            temb = temb + extra_emb.to(temb.dtype)

        skips = [x]
        for m in self.down:
            x = m(x) if isinstance(m, Downsample) else m(x, temb)
            skips.append(x)
        x = self.middle(x, temb)
        for m in self.up:
            x = m(x) if isinstance(m, Upsample) else m(x, skips.pop(), temb)

        if self.cfg.two_branch:
            act_rgb, act_d = F.silu(self.norm(x)).chunk(2, dim=1)
            raw_rgb, raw_d = x.chunk(2, dim=1)
            eps = torch.cat((self.final(act_rgb), self.final_d(act_d)), 1)
            mean = torch.cat((self.final_mean(raw_rgb), self.final_mean_d(raw_d)), 1)
        else:
            eps = norm_act_conv(x, self.norm, self.final, self.recompute)
            mean = self.final_mean(x)
        return eps, mean, self.final_seg(x)
