"""What feeds one category's training, built the same way for training and --preview-synthesis:
anomaly textures, foreground masks, the training set, the synthesizer and the loader."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from data.catalog import NO_COMPUTED_FG_MASKS
from data.datasets import TrainDataset, UnionTrainDataset, union_order
from data.demo_dataset import source_textures
from data.discovery import find_train_images
from data.fg_masks import DEFAULT_FG_MASK_PATH, FgMaskSource
from data.synthesis import AnomalySynthesizer
from data.textures import TextureSource
from data.training_data import make_train_loader
from models.modes import has_depth, has_rgb
from models.transparency import TransparencyProcess
from utils.core.errors import TransFusionError
from utils.machine.distributed import SINGLE, Dist, barrier
from utils.run.meta import category_view, read_meta
from utils.run.paths import RunPaths
from utils.training import caching


def texture_source(args: Any, announce: bool = True) -> TextureSource:
    """DTD from ``--dtd-path``, else the built-in bank (announced: it is not the paper's), less the
    textures a generated dataset under -d was cut from (an anomaly must not look like the normal
    surface)."""
    if args.dtd_path:
        return TextureSource.from_dtd(args.dtd_path)
    source = TextureSource.builtin(exclude=source_textures(args.data_path))
    if announce:
        print(f"note: no --dtd-path given, anomaly textures come from the {source.description}")
    return source


def foreground_masks(args: Any, category: str, paths: RunPaths, dist: Dist = SINGLE,
                     texture_rule: bool = True) -> FgMaskSource | None:
    """Rank 0 computes (and caches) the masks first; the other ranks then read the cache.

    The released masks are looked for in --fg-mask-path, else in ./fg_masks/ as the released
    code does; where the default folder lacks them they are computed, and the run says so.
    ``texture_rule`` False (-c train_multiclass): texture categories get masks too."""
    if has_depth(args.mode):
        return None  # depth modes use the depth plane mask, made by the dataset
    train_paths = find_train_images(args.dataset, args.data_path, category)
    fg = None
    for turn in (True, False):
        if dist.is_main == turn:
            fg = FgMaskSource.for_category(args.dataset, category, train_paths, args.img_size,
                                           args.fg_mask_path or DEFAULT_FG_MASK_PATH, not args.no_fg_masks,
                                           paths.fg_mask_cache(category), required=args.fg_mask_path is not None,
                                           texture_rule=texture_rule, computed=computed_fg_masks(args))
        barrier(dist)
    return fg


def computed_fg_masks(args: Any) -> bool:
    """Whether masks may be computed where none are released: yes, but for the datasets of
    NO_COMPUTED_FG_MASKS only with --computed-fg-masks."""
    return args.dataset not in NO_COMPUTED_FG_MASKS or bool(getattr(args, "computed_fg_masks", False))


def fg_mask_record(args: Any, fg: FgMaskSource | None, texture_rule: bool = True) -> dict[str, Any]:
    """Which foreground masks placed the synthetic anomalies, for the meta and summary files."""
    if fg is not None:
        return fg.record()
    if has_depth(args.mode):
        return {"kind": "depth-plane", "path": ""}
    if args.no_fg_masks:
        return {"kind": "none", "path": "", "why": "--no-fg-masks"}
    if not computed_fg_masks(args):
        return {"kind": "none", "path": "", "why": f"{args.dataset}: no released masks, and computed ones only with "
                                                   f"--computed-fg-masks"}
    assert texture_rule, "without the texture rule every category gets masks"
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


def check_same_holdout(paths: RunPaths, category: str, holdout: dict[str, Any] | None,
                       of: str | None = None) -> None:
    """--resume must train on the images the run started with: the same --holdout (``of``: the
    category of the multi-class network ``category``, whose meta keeps it per category)."""
    if not paths.train_states(category):
        return
    stored = category_view(read_meta(paths, category), of).get("holdout")
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
class CategoryImages:
    """One category's training images as training takes them, and what the meta records of them."""

    train_set: TrainDataset
    fg: FgMaskSource | None
    holdout: dict[str, Any] | None  # --holdout: the images left out


@dataclass
class TrainingData:
    process: TransparencyProcess
    train_set: Dataset
    loader: Any
    depth_norm: tuple[float, float] | None
    parts: dict[str, CategoryImages]  # per category (one for -c train, the union's for -c train_multiclass)

    @property
    def fg(self) -> FgMaskSource | None:
        """The foreground masks of a one-category training (None: all ones, or several categories)."""
        return next(iter(self.parts.values())).fg if len(self.parts) == 1 else None

    @property
    def holdout(self) -> dict[str, Any] | None:
        """The images a one-category training left out (per category: `parts`)."""
        return next(iter(self.parts.values())).holdout if len(self.parts) == 1 else None


def category_images(args: Any, category: str, paths: RunPaths, dist: Dist = SINGLE,
                    texture_rule: bool = True) -> CategoryImages:
    """Foreground masks and the training set of one category, less the --holdout images."""
    fg = foreground_masks(args, category, paths, dist, texture_rule)
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
    return CategoryImages(train_set, fg, holdout)


def training_data(args: Any, category: str, paths: RunPaths, dist: Dist = SINGLE,
                  textures: TextureSource | None = None, keep_decoded: bool = True,
                  categories: list[str] | None = None) -> TrainingData:
    """Foreground masks, the training set (less the --holdout images), the synthesizer and the
    half-anomalous loader. ``textures``: the run's texture source (one for all its categories),
    else made here. ``keep_decoded``: decode the images once, into memory, where the rule of
    utils/training/caching.py allows (before the loader starts its workers, which share them).
    With ``categories`` (-c train_multiclass, ``category`` the network's key), one training set of
    their union (docs/method.md §10: every image with its own category's foreground mask, texture
    categories included; one depth range over the union), each category's images kept as one's are."""
    process = TransparencyProcess(args.diffusion_num_steps, args.mode)
    if categories is None:
        parts = {category: category_images(args, category, paths, dist)}
    else:
        parts = {c: category_images(args, c, paths, dist, texture_rule=False) for c in union_order(categories)}
    if textures is None and has_rgb(args.mode):
        textures = texture_source(args, announce=False)
    if keep_decoded:
        for cat, part in parts.items():
            _keep_decoded(args, cat, part.train_set, textures, dist)
    if categories is None:
        train_set: Dataset = parts[category].train_set
        depth_norm = parts[category].train_set.depth_norm
    else:
        union = UnionTrainDataset([p.train_set for p in parts.values()])
        train_set, depth_norm = union, union.depth_norm
    synthesizer = AnomalySynthesizer(args.mode, args.img_size, textures)
    loader = make_train_loader(train_set, synthesizer, args.bs, args.seed, args.workers,
                               rank=dist.rank, world_size=dist.world_size)
    return TrainingData(process, train_set, loader, depth_norm, parts)
