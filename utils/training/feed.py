"""What feeds one category's training, built the same way for training and --preview-synthesis:
anomaly textures, foreground masks, the training set, the synthesizer and the loader."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data.datasets import TrainDataset
from data.discovery import find_train_images
from data.fg_masks import DEFAULT_FG_MASK_PATH, FgMaskSource
from data.synthesis import AnomalySynthesizer
from data.textures import TextureSource
from data.training_data import make_train_loader
from models.modes import has_depth, has_rgb
from models.transparency import TransparencyProcess
from utils.core.errors import TransFusionError
from utils.machine.distributed import SINGLE, Dist, barrier
from utils.run.meta import read_meta
from utils.run.paths import RunPaths
from utils.training import caching


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


def choose_holdout(train_paths: list[Path], k: int, category: str) -> dict[str, Any]:
    """``--holdout K``: K of the n sorted training images, evenly spaced (image floor((2i + 1)·n / 2K)
    for i = 0..K-1), so the choice depends on nothing but the file names; the meta records it."""
    n = len(train_paths)
    if k >= n:
        raise TransFusionError(f"--holdout {k}: {category} has {n} training images and at least one must be left "
                               f"to train on (--holdout {max(1, n - 1)} at most)")
    picked = [train_paths[(2 * i + 1) * n // (2 * k)] for i in range(k)]
    return {"count": k, "of": n, "files": [p.name for p in picked], "folder": str(picked[0].parent.resolve())}


def check_same_holdout(paths: RunPaths, category: str, holdout: dict[str, Any] | None) -> None:
    """--resume must train on the images the run started with: the same --holdout."""
    if not paths.train_states(category):
        return
    stored = read_meta(paths, category).get("holdout")
    if (stored or {}).get("files") != (holdout or {}).get("files"):
        was = f"--holdout {stored['count']}" if stored else "no --holdout"
        raise TransFusionError(f"--resume: {category} was trained with {was} ({paths.meta(category)}); "
                               f"resume with the same option")


def _keep_decoded(args: Any, category: str, train_set: TrainDataset, textures: TextureSource | None,
                  dist: Dist) -> None:
    """Keep the images decoded if they fit; rank 0 says so (another rank only when it cannot)."""
    chosen = caching.keep_decoded(train_set, textures, args.no_image_cache, progress=not args.quiet and dist.is_main)
    line = chosen.line(category, args.img_size)
    if line and dist.is_main:
        print(line)
    elif line and not chosen.keeps_images:
        print(f"rank {dist.rank}: {line}")


@dataclass
class TrainingData:
    process: TransparencyProcess
    train_set: TrainDataset
    loader: Any
    fg: FgMaskSource | None
    depth_norm: tuple[float, float] | None
    holdout: dict[str, Any] | None = None  # --holdout: the images left out, for the meta


def training_data(args: Any, category: str, paths: RunPaths, dist: Dist = SINGLE,
                  textures: TextureSource | None = None, keep_decoded: bool = True) -> TrainingData:
    """Foreground masks, the training set (less the --holdout images), the synthesizer and the
    half-anomalous loader. ``textures``: the run's texture source (one for all its categories),
    else made here. ``keep_decoded``: decode the images once, into memory, where the rule of
    utils/training/caching.py allows (before the loader starts its workers, which share them)."""
    process = TransparencyProcess(args.diffusion_num_steps, args.mode)
    fg = foreground_masks(args, category, paths, dist)
    if fg is not None and dist.is_main:
        print(f"[{category}] {fg.note}")
    holdout = None
    if getattr(args, "holdout", None):
        holdout = choose_holdout(find_train_images(args.dataset, args.data_path, category), args.holdout, category)
        if dist.is_main:
            print(f"[{category}] holding out {holdout['count']} of {holdout['of']} training images for "
                  f"-c calibrate: {', '.join(holdout['files'][:5])}{', ...' if holdout['count'] > 5 else ''}")
    train_set = TrainDataset(args.dataset, args.data_path, category, args.mode, args.img_size, fg_masks=fg,
                             exclude=frozenset(holdout["files"]) if holdout else ())
    if textures is None and has_rgb(args.mode):
        textures = texture_source(args, announce=False)
    if keep_decoded:
        _keep_decoded(args, category, train_set, textures, dist)
    synthesizer = AnomalySynthesizer(args.mode, args.img_size, textures)
    loader = make_train_loader(train_set, synthesizer, args.bs, args.seed, args.workers,
                               rank=dist.rank, world_size=dist.world_size)
    return TrainingData(process, train_set, loader, fg, train_set.depth_norm, holdout)
