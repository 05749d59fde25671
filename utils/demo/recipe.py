"""The ``-c demo`` recipe: its settings, its data and its figure (utils/commands.py runs it).

The data (data/demo_dataset.py) are small MVTec-layout categories cut from textures that ship with
scikit-image, with defects drawn by a generator of their own, so the score is not circular.
The network and schedule are scaled down to run on a laptop CPU in minutes; the method
(synthesis, transparency process, losses, scoring) is exactly the paper's. Any flag given
on the command line overrides the demo's value below (the parser takes them as the defaults
of ``-c demo``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from data.catalog import DEMO_CATEGORIES
from data.demo_dataset import build_demo_dataset, write_preview
from utils.reports.tables import avg_line, markdown_table
from utils.run.paths import RunPaths

# A CPU-sized configuration: 64 px, a 3-level 32-channel UNet with attention only at the
# lowest level, a larger learning rate for the short schedule. Chosen by measurement.
DEMO_SETTINGS: dict[str, Any] = {
    "run_name": "demo",
    "dataset": "mvtec",
    "mode": "rgb",
    "category": "all",
    "img_size": 64,
    "unet_channel_num": 32,
    "unet_ch_mults": [1, 2, 2],
    "unet_attn": [False, False, True],
    "unet_group_conv": [True, True, True],
    "unet_n_blocks": 1,
    "epoch_num": 50,
    "lr": 2e-4,
    "bs": 8,
    "step_size": 1000,
    "eval_epoch_num": 0,
    "save_every": 10,
    "no_fg_masks": True,       # textures: anomalies may appear anywhere, as for MVTec textures
    "visualize": True,
    "workers": 1,
}
# What training with the demo's recipe means on the command line (studies and benchmarks train other
# data, runs and seeds with it): the settings above that shape the network and its training.
RECIPE_KEYS = ("img_size", "unet_channel_num", "unet_ch_mults", "unet_attn", "unet_group_conv", "unet_n_blocks",
               "epoch_num", "lr", "bs", "step_size", "eval_epoch_num", "save_every", "no_fg_masks", "workers")


def recipe_flags(settings: dict[str, Any] = DEMO_SETTINGS) -> list[str]:
    """The demo's recipe as command-line flags (``--img-size 64 --unet-ch-mults 1 2 2 ...``)."""
    flags: list[str] = []
    for key in RECIPE_KEYS:
        value, flag = settings[key], "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        elif isinstance(value, list):
            flags += [flag, *(("T" if v else "F") if isinstance(v, bool) else str(v) for v in value)]
        else:
            flags += [flag, str(value)]
    return flags


DEMO_DATA = dict(image_size=128, n_train=48, n_test_good=12, n_test_per_defect=4, seed=0)


def prepare(args: argparse.Namespace) -> tuple[list[str], RunPaths]:
    """Build (or reuse) the demo data; a fresh demo replaces the previous one as ``--overwrite``
    does (its run folder is the demo's own), unless ``--resume`` asks to continue it."""
    categories = list(DEMO_CATEGORIES) if args.category == "all" else [args.category]
    root = build_demo_dataset(Path(args.data_path), categories=categories, **DEMO_DATA)
    preview = write_preview(root, root / "preview.png")
    print(f"demo data: {root.resolve()} (MVTec AD layout; overview {preview})")
    paths = RunPaths(args.log_path, args.run_name)
    if not args.resume:
        args.overwrite = True
        if any(paths.has_weights(c) or paths.train_states(c) for c in categories):
            print(f"demo: {paths.root} holds a previous demo; the demo overwrites its own run as --overwrite "
                  f"does: the old files move to {paths.root}/replaced-<time>/ (--resume continues it instead)")
    return categories, paths


def report(rows: dict[str, dict[str, Any]], paths: RunPaths, categories: list[str], started: float,
           device: torch.device) -> None:
    """The qualitative figure, the table, where everything is, and the original's AVG line."""
    figure = _qualitative_figure(paths, categories)
    minutes = (time.perf_counter() - started) / 60
    print()
    print(markdown_table(rows))
    from utils.machine.yardstick import matmul_gflops

    rate = max(matmul_gflops(repeats=3))  # machines differ ~2x: a time means little without it
    print(f"demo finished in {minutes:.1f} min on {device} (this machine's 4096² float32 matmul: {rate:.0f} GFLOP/s)")
    print(f"pictures: {paths.root.resolve() / 'results'}/<category>/visualizations/*.png "
          f"(input | ground truth | heat map | reconstruction), curves roc.png and pro.png"
          + (f"; overview {figure}" if figure else ""))
    print(f"per-image scores: {paths.root.resolve() / 'results'}/<category>/per_image.csv; "
          f"summary: {paths.output_csv.resolve()}")
    print(avg_line(rows))


def _qualitative_figure(paths: RunPaths, categories: list[str]) -> Path | None:
    """One picture of a few defects per category, from the panels just written."""
    import cv2

    from utils.reports.figures import save_grid

    panels = []
    for cat in categories:
        folder = paths.visualizations(cat)
        picks = [p for p in sorted(folder.glob("*.png")) if not p.name.startswith("good_")]
        seen: set[str] = set()
        for p in picks:
            defect = p.name.split("_")[0]
            if defect in seen:
                continue
            seen.add(defect)
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is not None:
                panels.append(img)  # BGR, as save_grid expects
            if len(seen) == 2:
                break
    if not panels:
        return None
    out = paths.qualitative_figure
    save_grid(out, panels, ncols=1)
    return out
