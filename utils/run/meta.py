"""A category's meta side file, ``models/<category>_meta.json``: what training, -c test and
-c calibrate record beside the released-format weights (which hold nothing but tensors).

Training writes the network, image size, T, dataset, depth range, epoch and seed; -c test adds
its F1-max threshold and heat-map scale; -c calibrate its calibration record. Released weights
come without one: every reader then falls back to the flags (utils/run/settings.py). A run
folder may come from anyone, so the meta is parsed defensively (utils/core/json_files.py) and
every key checked where it is read (utils/run/meta_schema.py).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from models.unet import UNetConfig
from utils.core.atomic import atomic_write_json
from utils.core.errors import TransFusionError
from utils.core.json_files import BadJsonFile, load_json_file
from utils.run.meta_schema import check_meta
from utils.run.paths import MULTICLASS, RunPaths


def read_meta(paths: RunPaths, category: str) -> dict[str, Any]:
    """The category's meta, or {} when the run has none (released weights); every key it holds
    checked (utils/run/meta_schema.py), so what is returned is what its writers wrote."""
    p = paths.meta(category)
    if not p.exists():
        return {}
    try:
        meta = load_json_file(p)
    except (OSError, BadJsonFile) as exc:
        why = exc.strerror or exc if isinstance(exc, OSError) else exc
        raise TransFusionError(f"{p} is unreadable ({why}); delete it to use the weights alone") from None
    return check_meta(meta, p)


def update_meta(paths: RunPaths, category: str, **values: Any) -> None:
    """Add or replace keys of the category's meta (atomically)."""
    meta = read_meta(paths, category)
    meta.update(values)
    atomic_write_json(paths.meta(category), meta)


def category_view(meta: dict[str, Any], category: str | None) -> dict[str, Any]:
    """A multi-class network's meta as seen by one of its categories: the category's own entries
    (``per_category[category]``: its F1-max threshold, heat-map scale, calibration) over the
    network's (those for the union). A per-category network's meta, or ``category`` None: as is."""
    own = (meta.get("per_category") or {}).get(category) if category else None
    return {**meta, **own} if own else meta


def network_for(paths: RunPaths, category: str) -> tuple[str, str | None]:
    """Which network of the run scores ``category``, and the category whose thresholds apply: its own
    network (category, None); else the multi-class network when it was trained on ``category``
    (MULTICLASS, category); ``MULTICLASS`` (or "*") itself: (MULTICLASS, None)."""
    if category in (MULTICLASS, "*"):
        return MULTICLASS, None
    if not paths.has_weights(category) and paths.has_weights(MULTICLASS):
        trained_on = read_meta(paths, MULTICLASS).get("categories") or []
        if category in trained_on:
            return MULTICLASS, category
        raise TransFusionError(f"run {paths.root} holds a multi-class network trained on "
                               f"{', '.join(map(str, trained_on)) or 'unknown categories'}, not on {category!r}; "
                               f"leave --category out to score with it")
    return category, None


def update_category_meta(paths: RunPaths, network: str, category: str, **values: Any) -> None:
    """Record ``values`` for ``category`` in the meta of ``network``: at the top for a per-category
    network (network == category), under ``per_category[category]`` for the multi-class one."""
    if network == category:
        update_meta(paths, network, **values)
        return
    meta = read_meta(paths, network)
    per = dict(meta.get("per_category") or {})
    per[category] = {**(per.get(category) or {}), **values}
    meta["per_category"] = per
    atomic_write_json(paths.meta(network), meta)


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
