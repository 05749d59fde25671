"""What feeds one category's training, built the same way for training and --preview-synthesis:
anomaly textures, foreground masks, the training set, the synthesizer and the loader."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data.datasets import TrainDataset
from data.discovery import find_train_images
from data.fg_masks import DEFAULT_FG_MASK_PATH, FgMaskSource
from data.synthesis import AnomalySynthesizer
from data.textures import TextureSource
from data.training_data import make_train_loader
from models.modes import has_depth, has_rgb
from models.transparency import TransparencyProcess
from utils.distributed import SINGLE, Dist, barrier
from utils.runs import RunPaths


def texture_source(args: Any, announce: bool = True) -> TextureSource:
    """DTD from ``--dtd-path``, else the built-in bank (announced: it is not the paper's)."""
    if args.dtd_path:
        return TextureSource.from_dtd(args.dtd_path)
    source = TextureSource.builtin()
    if announce:
        print(f"note: no --dtd-path given, anomaly textures come from the {source.description}")
    return source


def foreground_masks(args: Any, category: str, paths: RunPaths, dist: Dist = SINGLE) -> FgMaskSource | None:
    """Rank 0 computes (and caches) the masks first; the other ranks then read the cache.

    The released masks are looked for in --fg-mask-path, else in ./fg_masks/ as the released
    code does; where the default folder lacks them they are computed, and the run says so."""
    if has_depth(args.mode):
        return None  # depth modes use the depth plane mask, made by the dataset
    train_paths = find_train_images(args.dataset, args.data_path, category)
    fg = None
    for turn in (True, False):
        if dist.is_main == turn:
            fg = FgMaskSource.for_category(args.dataset, category, train_paths, args.img_size,
                                           args.fg_mask_path or DEFAULT_FG_MASK_PATH, not args.no_fg_masks,
                                           paths.fg_mask_cache(category), required=args.fg_mask_path is not None)
        barrier(dist)
    return fg


def fg_mask_record(args: Any, fg: FgMaskSource | None) -> dict[str, Any]:
    """Which foreground masks placed the synthetic anomalies, for the meta and summary files."""
    if fg is not None:
        return fg.record()
    if has_depth(args.mode):
        return {"kind": "depth-plane", "path": ""}
    if args.no_fg_masks:
        return {"kind": "none", "path": "", "why": "--no-fg-masks"}
    return {"kind": "none", "path": "", "why": "texture category"}


@dataclass
class TrainingData:
    process: TransparencyProcess
    train_set: TrainDataset
    loader: Any
    fg: FgMaskSource | None
    depth_norm: tuple[float, float] | None


def training_data(args: Any, category: str, paths: RunPaths, dist: Dist = SINGLE) -> TrainingData:
    """Foreground masks, the training set, the synthesizer and the half-anomalous loader."""
    process = TransparencyProcess(args.diffusion_num_steps, args.mode)
    fg = foreground_masks(args, category, paths, dist)
    if fg is not None and dist.is_main:
        print(f"[{category}] {fg.note}")
    train_set = TrainDataset(args.dataset, args.data_path, category, args.mode, args.img_size, fg_masks=fg)
    textures = texture_source(args, announce=False) if has_rgb(args.mode) else None
    synthesizer = AnomalySynthesizer(args.mode, args.img_size, textures)
    loader = make_train_loader(train_set, synthesizer, args.bs, args.seed, args.workers,
                               rank=dist.rank, world_size=dist.world_size)
    return TrainingData(process, train_set, loader, fg, train_set.depth_norm)
