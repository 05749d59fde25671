"""Checkpoint fixtures for tests: the released state-dict layout written out independently of
models/unet.py (from the official `create_model`), and synthetic checkpoints in it.

Not tests, and not production code: nothing outside tests/ needs these.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from models.checkpoint import PREFIX
from models.unet import UNetConfig


def reference_shapes(spec: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Key → shape of the released state dict layout for ``spec`` (the inverse of `config_from_state_dict`).

    Mirrors the official `create_model` network, so with the defaults it reproduces
    `reference/official_state_dict_<mode>.tsv` exactly; useful to build test checkpoints.
    """
    n = spec.n_channels
    two = spec.mode == "rgbd"
    t_ch = 4 * n
    shapes: dict[str, tuple[int, ...]] = {f"{PREFIX}pos_emb.penc.inv_freq": (1,)}

    def add(name: str, **entries: tuple[int, ...]) -> None:
        for k, v in entries.items():
            shapes[f"{PREFIX}{name}.{k}"] = v

    def groups(level: int) -> int:
        return 2 if two and spec.group_conv[level] else 1

    def res(name: str, c_in: int, c_out: int, g: int) -> None:
        add(f"{name}.norm1", weight=(c_in,), bias=(c_in,))
        add(f"{name}.conv1", weight=(c_out, c_in // g, 3, 3), bias=(c_out,))
        add(f"{name}.norm2", weight=(c_out,), bias=(c_out,))
        add(f"{name}.conv2", weight=(c_out, c_out // g, 3, 3), bias=(c_out,))
        if c_in != c_out:
            add(f"{name}.shortcut", weight=(c_out, c_in // g, 1, 1), bias=(c_out,))
        add(f"{name}.time_emb", weight=(c_out, t_ch), bias=(c_out,))

    def attention(name: str, c: int) -> None:
        # rgbd: one single-head attention per branch, each over half the channels
        for branch in (("attn", "attn_d") if two else ("attn",)):
            ch = c // 2 if two else c
            add(f"{name}.{branch}.projection", weight=(3 * ch, ch), bias=(3 * ch,))
            add(f"{name}.{branch}.output", weight=(ch, ch), bias=(ch,))

    if two:
        add("image_proj_rgb", weight=(n // 2, 3 + 2, 3, 3), bias=(n // 2,))
        add("image_proj_d", weight=(n // 2, 1 + 2, 3, 3), bias=(n // 2,))
    else:
        add("image_proj", weight=(n, spec.image_channels + 2, 3, 3), bias=(n,))
    add("time_emb.linear_1", weight=(t_ch, n), bias=(t_ch,))
    add("time_emb.linear_2", weight=(t_ch, t_ch), bias=(t_ch,))

    levels = len(spec.ch_mults)
    i, c = 0, n
    for lv in range(levels):
        out = c * spec.ch_mults[lv]
        for _ in range(spec.n_blocks):
            res(f"down.{i}.res", c, out, groups(lv))
            if spec.attn[lv]:
                attention(f"down.{i}", out)
            c = out
            i += 1
        if lv < levels - 1:
            add(f"down.{i}.conv", weight=(c, c // groups(lv), 3, 3), bias=(c,))
            i += 1

    g_mid = groups(levels - 1)
    res("middle.res1", c, c, g_mid)
    attention("middle", c)
    res("middle.res2", c, c, g_mid)

    i = 0
    for lv in reversed(range(levels)):
        for _ in range(spec.n_blocks):
            res(f"up.{i}.res", c + c, c, groups(lv))
            if spec.attn[lv]:
                attention(f"up.{i}", c)
            i += 1
        out = c // spec.ch_mults[lv]
        res(f"up.{i}.res", c + out, out, groups(lv))
        if spec.attn[lv]:
            attention(f"up.{i}", out)
        i += 1
        c = out
        if lv > 0:
            # ConvTranspose2d weights are (in, out/groups, k, k)
            add(f"up.{i}.conv", weight=(c, c // groups(lv), 4, 4), bias=(c,))
            i += 1

    add("norm", weight=(n,), bias=(n,))
    if two:
        for head, ch in (("final", 3), ("final_mean", 3), ("final_d", 1), ("final_mean_d", 1)):
            add(head, weight=(ch, n // 2, 3, 3), bias=(ch,))
    else:
        add("final", weight=(spec.image_channels, n, 3, 3), bias=(spec.image_channels,))
        add("final_mean", weight=(spec.image_channels, n, 3, 3), bias=(spec.image_channels,))
    add("final_seg.norm", weight=(n,), bias=(n,), running_mean=(n,), running_var=(n,),
        num_batches_tracked=())
    add("final_seg.conv", weight=(1, n, 3, 3), bias=(1,))
    return shapes


def synthetic_state_dict(spec: UNetConfig, device: str | torch.device = "meta",
                         seed: int | None = None) -> dict[str, torch.Tensor]:
    """A state dict in the released layout for ``spec``: empty on "meta", small random values
    otherwise (seeded), with the buffers' real dtypes. For tests and tooling, not training."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    out: dict[str, torch.Tensor] = {}
    for key, shape in reference_shapes(spec).items():
        dtype = torch.int64 if key.endswith("num_batches_tracked") else torch.float32
        if torch.device(device).type == "meta":
            out[key] = torch.empty(shape, dtype=dtype, device="meta")
        elif dtype == torch.int64:
            out[key] = torch.zeros(shape, dtype=dtype, device=device)
        else:
            out[key] = (torch.rand(shape, generator=gen) * 0.2 - 0.1).to(device)
    out[f"{PREFIX}pos_emb.penc.inv_freq"] = torch.ones(1, device=device)
    return out


def count_parameters(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Number of values in a key→shape mapping (handy to compare with the model summary)."""
    return sum(math.prod(s) for s in shapes.values())
