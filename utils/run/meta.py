"""A category's meta side file, ``models/<category>_meta.json``: what training, -c test and
-c calibrate record beside the released-format weights (which hold nothing but tensors).

Training writes the network, image size, T, dataset, depth range, epoch and seed; -c test adds
its F1-max threshold and heat-map scale; -c calibrate its calibration record. Released weights
come without one: every reader then falls back to the flags (utils/run/settings.py).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from models.unet import UNetConfig
from utils.core.atomic import atomic_write_json
from utils.core.errors import TransFusionError
from utils.run.paths import RunPaths


def read_meta(paths: RunPaths, category: str) -> dict[str, Any]:
    """The category's meta, or {} when the run has none (released weights)."""
    p = paths.meta(category)
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TransFusionError(f"{p} is unreadable ({exc}); delete it to fall back to the weights alone") from None


def update_meta(paths: RunPaths, category: str, **values: Any) -> None:
    """Add or replace keys of the category's meta (atomically)."""
    meta = read_meta(paths, category)
    meta.update(values)
    atomic_write_json(paths.meta(category), meta)


def build_meta(cfg: UNetConfig, args: Any, epoch: int, depth_norm: tuple[float, float] | None) -> dict[str, Any]:
    """What training records about the network it trains."""
    return {
        "unet": asdict(cfg),
        "img_size": args.img_size,
        "diffusion_num_steps": args.diffusion_num_steps,
        "dataset": args.dataset,
        "depth_norm": list(depth_norm) if depth_norm else None,
        "epoch": epoch,
        "seed": args.seed,
    }
