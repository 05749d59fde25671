"""``-c test``: evaluate each category's checkpoint on its test set and write the results."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from data.datasets import TestDataset, TrainDataset
from data.discovery import find_test_samples, resolve_categories
from models.modes import has_depth
from models.transparency import TransparencyProcess
from utils.config import runtime_options, scoring_options
from utils.distributed import SINGLE, Dist, init_distributed, shutdown
from utils.errors import TransFusionError
from utils.evaluation import EvalOutput, EvalSettings, evaluate
from utils.reporting import (append_output_csv, avg_line, fmt_pct, heat_map_range, markdown_table, write_panels,
                             write_results)
from utils.runs import RunPaths, load_network, update_meta


def checked_process(num_steps: int, mode: str, eval_steps: int | None, meta_path: Path) -> TransparencyProcess:
    """The run's transparency process, refusing an --eval-steps its T cannot take."""
    process = TransparencyProcess(num_steps, mode)
    if eval_steps is not None and not 1 <= eval_steps <= num_steps - 2:
        raise TransFusionError(f"--eval-steps {eval_steps}: the checkpoint was trained with {num_steps} diffusion "
                               f"steps ({meta_path}), so 1..{num_steps - 2} reverse steps are possible")
    return process


def eval_settings(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings(scoring=scoring_options(args), runtime=runtime_options(args), batch_size=args.eval_bs,
                        workers=args.workers)


def _test_set(args: argparse.Namespace, category: str, mode: str, meta: dict[str, Any]) -> TestDataset:
    """The category's test set, depth scaled with the training range (from the meta, or, for
    released checkpoints that carry no side file, recomputed from the training set)."""
    depth_norm = tuple(meta["depth_norm"]) if meta.get("depth_norm") else None
    if has_depth(mode) and depth_norm is None:
        depth_norm = TrainDataset(args.dataset, args.data_path, category, mode, args.img_size).depth_norm
    if not find_test_samples(args.dataset, args.data_path, category):
        raise TransFusionError(f"category {category} has no test images under {args.data_path}; "
                               f"-c test needs a test set (use -c predict for unlabelled images)")
    return TestDataset(args.dataset, args.data_path, category, mode, args.img_size, depth_norm=depth_norm)


def _record(args: argparse.Namespace, category: str, paths: RunPaths, meta: dict[str, Any], out: EvalOutput) -> None:
    """Rank 0: result files, the stored threshold and heat-map scale, the output.csv row."""
    results = paths.results(category)
    write_results(out, results, {
        "run": args.run_name, "category": category, "checkpoint": str(paths.weights(category)),
        "epoch": meta.get("epoch"), "fg_masks": meta.get("fg_masks"), "schedule": scoring_options(args).schedule(),
        "config": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))},
    })
    if out.metrics.get("image_f1_threshold") is not None:
        # a threshold is only valid for the step schedule that made the scores
        update_meta(paths, category, f1_threshold=out.metrics["image_f1_threshold"],
                    f1_schedule=scoring_options(args).schedule(), map_range=list(heat_map_range(out.maps)))
    append_output_csv(paths.output_csv, args.run_name, category, meta.get("epoch", "released"), out.metrics)
    print(f"[{category}] image AUROC {fmt_pct(out.metrics['image_auroc'])}, AUPRO {fmt_pct(out.metrics['aupro'])}, "
          f"{out.seconds / max(1, len(out.scores)):.2f} s/image; results in {results}")


def test_categories(args: argparse.Namespace, categories: list[str], paths: RunPaths,
                    device: torch.device, dist: Dist = SINGLE) -> dict[str, dict[str, Any]]:
    """Evaluate each category's checkpoint; write per-category results and output.csv rows.
    Under torchrun the images are sharded across processes and rank 0 writes the results."""
    runtime = runtime_options(args)
    rows: dict[str, dict[str, Any]] = {}
    for cat in categories:
        net, meta = load_network(paths, cat, args.mode, args.unet_channel_num, runtime, device)
        mode = net.cfg.mode
        if dist.is_main and meta.get("img_size") and meta["img_size"] != args.img_size:
            print(f"[{cat}] note: trained at {meta['img_size']} px, testing at --img-size {args.img_size}")
        test_set = _test_set(args, cat, mode, meta)
        process = checked_process(meta.get("diffusion_num_steps", args.diffusion_num_steps), mode,
                                  args.eval_steps, paths.meta(cat))
        out = evaluate(runtime.callable(net), process, test_set, device, eval_settings(args), dist=dist,
                       progress=not args.quiet and dist.is_main, desc=f"[{cat}] test", keep_pictures=args.visualize)
        if args.visualize:
            write_panels(paths.results(cat) / "visualizations", out, mode)
        rows[cat] = out.metrics
        if dist.is_main:
            _record(args, cat, paths, meta, out)
    return rows


def run_test(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``-c test`` for ``--category`` (one or all), then the table and the original's AVG line."""
    dist, device = init_distributed(args.device)
    try:
        paths = RunPaths(args.log_path, args.run_name)
        if not paths.models.is_dir():
            raise TransFusionError(f"no checkpoints in {paths.models}: train first (-c train -r {args.run_name}) "
                                   f"or fetch the released weights with scripts/download_weights.py")
        categories = resolve_categories(args.dataset, args.data_path, args.category)
        rows = test_categories(args, categories, paths, device, dist)
        if dist.is_main:
            print()
            print(markdown_table(rows))
            print(avg_line(rows))
        return rows
    finally:
        shutdown(dist)
