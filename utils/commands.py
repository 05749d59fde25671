"""What each ``-c`` choice does; `Experiment.py` only parses and dispatches here."""
from __future__ import annotations

import argparse
from typing import Any

import torch

from data.datasets import TestDataset, TrainDataset, find_test_samples, resolve_categories
from models.transparency import TransparencyProcess
from utils.errors import TransFusionError
from utils.evaluation import (append_output_csv, avg_line, evaluate, fmt_pct, heat_map_range, markdown_table,
                              write_results)
from utils.distributed import SINGLE, Dist, barrier, init_distributed, shutdown
from utils.speed import maybe_compile
from utils.runs import RunPaths, load_network, update_meta


def pick_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TransFusionError(f"--device {name!r} is not a device name (try cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TransFusionError(f"--device {name} asked for CUDA, but no CUDA GPU is visible; use --device cpu")
    return device


def run_train(args: argparse.Namespace, categories: list[str] | None = None) -> dict[str, Any]:
    """Train every category of ``--category`` (or the given list) in turn."""
    from utils.preflight import check_run_folder, checkpoint_bytes, dry_run, parameter_count
    from utils.training import texture_source, train_category

    dist, device = init_distributed(args.device)
    try:
        if args.dry_run:
            if dist.is_main:
                dry_run(args, device)
            return {}
        paths = RunPaths(args.log_path, args.run_name)
        if categories is None:
            categories = resolve_categories(args.dataset, args.data_path, args.category)
        if args.preview_synthesis:
            if dist.is_main:
                from utils.synthesis_preview import run_preview

                if args.mode != "d":
                    texture_source(args, announce=True)
                run_preview(args, categories, paths)
            return {}
        if dist.is_main:
            check_run_folder(paths, checkpoint_bytes(parameter_count(args), args.keep_last))
            if args.mode != "d":
                texture_source(args, announce=True)  # validates --dtd-path now, says what is used
        per_category = dist
        if dist.enabled and args.split_categories:
            categories, per_category = categories[dist.rank::dist.world_size], SINGLE
        where = f"{device}" + (f", {dist.world_size} processes" if dist.enabled else "")
        if dist.is_main or per_category is SINGLE:
            print(f"training {len(categories)} categor{'y' if len(categories) == 1 else 'ies'} on {where}: "
                  f"{', '.join(categories) or '-'}; run folder {paths.root}")
        outcomes = {}
        for cat in categories:
            outcome = train_category(args, cat, device, paths, per_category)
            outcomes[cat] = outcome
            if outcome.interrupted:
                break
            if dist.is_main or per_category is SINGLE:
                print(f"[{cat}] trained {outcome.epochs_done} epochs in {outcome.seconds / 60:.1f} min; "
                      f"weights: {paths.weights(cat)}")
        barrier(dist)
        return outcomes
    finally:
        shutdown(dist)


def test_categories(args: argparse.Namespace, categories: list[str], paths: RunPaths,
                    device: torch.device, dist: Dist = SINGLE) -> dict[str, dict[str, Any]]:
    """Evaluate each category's checkpoint; write per-category results and output.csv rows.
    Under torchrun the images are sharded across processes and rank 0 writes the results."""
    rows: dict[str, dict[str, Any]] = {}
    for cat in categories:
        net, meta = load_network(paths, cat, args, device)
        mode = net.cfg.mode
        net = maybe_compile(net, args.compile)
        if dist.is_main and meta.get("img_size") and meta["img_size"] != args.img_size:
            print(f"[{cat}] note: trained at {meta['img_size']} px, testing at --img-size {args.img_size}")
        depth_norm = tuple(meta["depth_norm"]) if meta.get("depth_norm") else None
        if mode != "rgb" and depth_norm is None:
            # released checkpoints carry no side file: recompute the range from the training set
            depth_norm = TrainDataset(args.dataset, args.data_path, cat, mode, args.img_size).depth_norm
        if not find_test_samples(args.dataset, args.data_path, cat):
            raise TransFusionError(f"category {cat} has no test images under {args.data_path}; "
                                   f"-c test needs a test set (use -c predict for unlabelled images)")
        test_set = TestDataset(args.dataset, args.data_path, cat, mode, args.img_size, depth_norm=depth_norm)
        process = TransparencyProcess(meta.get("diffusion_num_steps", args.diffusion_num_steps), mode)
        results = paths.results(cat)
        out = evaluate(net, process, test_set, device, args.eval_kernel_size, args.eval_w,
                       args.eval_bs, args.workers, progress=not args.quiet and dist.is_main,
                       desc=f"[{cat}] test", amp=args.amp, dist=dist,
                       visualize_dir=results / "visualizations" if args.visualize else None)
        rows[cat] = out.metrics
        if not dist.is_main:
            continue
        write_results(out, results, {
            "run": args.run_name, "category": cat, "checkpoint": str(paths.weights(cat)),
            "epoch": meta.get("epoch"), "fg_masks": meta.get("fg_masks"), "config": {k: v for k, v in vars(args).items()
                                                   if isinstance(v, (str, int, float, bool, list, type(None)))},
        })
        if out.metrics.get("image_f1_threshold") is not None:
            update_meta(paths, cat, f1_threshold=out.metrics["image_f1_threshold"],
                        map_range=list(heat_map_range(out.maps)))
        append_output_csv(paths.output_csv, args.run_name, cat, meta.get("epoch", "released"), out.metrics)
        print(f"[{cat}] image AUROC {fmt_pct(out.metrics['image_auroc'])}, AUPRO {fmt_pct(out.metrics['aupro'])}, "
              f"{out.seconds / max(1, len(out.scores)):.2f} s/image; results in {results}")
    return rows


def run_test(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
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


def run_predict(args: argparse.Namespace) -> None:
    from utils.prediction import predict

    predict(args, pick_device(args.device))


def run_demo(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from utils.demo import demo

    return demo(args, pick_device(args.device))
