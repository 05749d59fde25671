"""``-c test``: evaluate each category's checkpoint on its test set and write the results."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from data.datasets import TestDataset
from data.discovery import find_test_samples, resolve_categories, scan_category
from models.modes import has_depth
from utils.core.errors import TransFusionError
from utils.evaluation.loop import EvalOutput, EvalSettings, evaluate
from utils.evaluation.pages import page_facts, threshold_lines, write_run_index, write_test_report
from utils.evaluation.results import heat_map_range, write_panels, write_results
from utils.machine.distributed import SINGLE, Dist, init_distributed, shutdown
from utils.reports.output_csv import append_output_csv
from utils.reports.published import Comparison, compare, published_figures, published_table, settings_differences
from utils.reports.tables import avg_line, fmt_pct, markdown_table
from utils.run.meta import update_meta
from utils.run.network import open_network
from utils.run.ownership import results_lock
from utils.run.paths import RunPaths
from utils.run.settings import Requested, RunSettings, runtime_options, scoring_options, training_depth_range
from utils.run.thresholds import Threshold, calibrated_threshold, schedule_note


def eval_settings(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings(scoring=scoring_options(args), runtime=runtime_options(args), batch_size=args.eval_bs,
                        workers=args.workers)


def _test_set(args: argparse.Namespace, settings: RunSettings) -> TestDataset:
    """The category's test set at the run's image size, depth scaled with the run's range."""
    category = settings.category
    if has_depth(settings.mode) and args.dataset != "mvtec3d":
        raise TransFusionError(f"{settings.meta_path.parent}: {category} is a {settings.mode} network, which needs "
                               f"depth: test it with -ds mvtec3d")
    if not find_test_samples(args.dataset, args.data_path, category):
        raise TransFusionError(f"category {category} has no test images under {args.data_path}; "
                               f"-c test needs a test set (use -c predict for unlabelled images)")
    return TestDataset(args.dataset, args.data_path, category, settings.mode, settings.image_size,
                       depth_norm=settings.depth_norm)


def _thresholds(args: argparse.Namespace, category: str, paths: RunPaths, meta: dict[str, Any],
                out: EvalOutput) -> tuple[Threshold | None, list[Threshold], list[str]]:
    """The threshold that decides (the calibrated one if the run has it, else this test's F1-max, as
    -c predict would choose), every candidate, and notes about them."""
    schedule = scoring_options(args).schedule()
    f1 = None if out.metrics.get("image_f1_threshold") is None else Threshold(
        float(out.metrics["image_f1_threshold"]), "F1-max", False,
        f"F1-max on this test set, stored in {paths.meta(category)}", schedule)
    calibrated = calibrated_threshold(meta, paths.meta(category))
    in_use = calibrated or f1
    notes = [n for n in [schedule_note(in_use, schedule) if in_use else None] if n]
    return in_use, [t for t in (calibrated, f1) if t is not None], notes


def _published(args: argparse.Namespace, category: str, mode: str,
               out: EvalOutput) -> tuple[Comparison | None, str | None, list[str]]:
    """The released run's figures beside ours where dataset, mode and category match, their source,
    and a note when this test scores differently from the way they were made."""
    comparison = compare(out.metrics, published_figures(args.dataset, mode, category))
    if comparison is None:
        return None, None, []
    differ = settings_differences(args.dataset, args.eval_w, args.eval_kernel_size, scoring_options(args).schedule())
    notes = [f"note: the published figures were made with the original scoring; this test differs: "
             f"{', '.join(differ)}"] if differ else []
    return comparison, published_table(args.dataset).source, notes  # type: ignore[union-attr]


def _record(args: argparse.Namespace, category: str, paths: RunPaths, meta: dict[str, Any], out: EvalOutput,
            test_set: TestDataset, mode: str) -> None:
    """Rank 0: result files (decisions, published figures and Δ), the stored threshold and heat-map
    scale, the output.csv row, the category's report.html and the run's index.html."""
    results = paths.results(category)
    in_use, candidates, notes = _thresholds(args, category, paths, meta, out)
    decisions = [in_use.decide(float(s)) for s in out.scores] if in_use else None
    comparison, source, published_notes = _published(args, category, mode, out)
    notes += published_notes
    summary = {
        "run": args.run_name, "category": category, "dataset": args.dataset, "mode": mode,
        "checkpoint": str(paths.weights(category)), "epoch": meta.get("epoch"), "fg_masks": meta.get("fg_masks"),
        "schedule": scoring_options(args).schedule(),
        "published": comparison.published if comparison else None, "delta": comparison.delta if comparison else None,
        "published_source": source, "decision_threshold": in_use.as_dict() if in_use else None,
        "thresholds": [t.as_dict() for t in candidates],
        "n_mistakes": None if decisions is None else int(sum((d == "defect") != bool(y)
                                                             for d, y in zip(decisions, out.labels))),
        "config": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))},
    }
    write_results(out, results, summary, decisions)
    map_range = heat_map_range(out.maps)
    if out.metrics.get("image_f1_threshold") is not None:
        # a threshold is only valid for the step schedule that made the scores
        update_meta(paths, category, f1_threshold=out.metrics["image_f1_threshold"],
                    f1_schedule=scoring_options(args).schedule(), map_range=list(map_range))
    append_output_csv(paths.output_csv, args.run_name, category, meta.get("epoch", "released"), out.metrics,
                      comparison)
    for note in notes:
        print(f"[{category}] {note}")
    summary.update(n_images=len(out.scores), n_anomalous=int(out.labels.sum()))
    report = write_test_report(results, f"{args.run_name} / {category}", out, test_set, mode,
                               page_facts(args.run_name, category, summary),
                               threshold_lines(candidates, in_use, out.scores, out.labels), decisions, comparison,
                               source, map_range, notes, progress=not args.quiet)
    write_run_index(results.parent, args.run_name)
    print(f"[{category}] image AUROC {fmt_pct(out.metrics['image_auroc'])}, AUPRO {fmt_pct(out.metrics['aupro'])}, "
          f"{out.seconds / max(1, len(out.scores)):.2f} s/image; results in {results} (open {report})")


@dataclass
class Tested:
    """One category's test: its metrics and the released run's figures they were compared with."""

    metrics: dict[str, Any]
    published: dict[str, float] | None


def test_categories(args: argparse.Namespace, categories: list[str], paths: RunPaths,
                    device: torch.device, dist: Dist = SINGLE) -> dict[str, Tested]:
    """Evaluate each category's checkpoint with the run's own settings (utils/run/settings.py);
    write per-category results and output.csv rows. Under torchrun the images are sharded across
    processes and rank 0 writes the results."""
    runtime = runtime_options(args)
    requested = Requested.from_args(args)
    tested: dict[str, Tested] = {}
    for cat in categories:
        net, settings = open_network(paths, cat, requested, runtime, device, training_depth_range(args, cat))
        if dist.is_main:
            for note in settings.notes:
                print(note)
        test_set = _test_set(args, settings)
        if dist.is_main:
            print(scan_category(args.dataset, args.data_path, cat, train=False).line())
        out = evaluate(runtime.callable(net), settings.process, test_set, device, eval_settings(args), dist=dist,
                       progress=not args.quiet and dist.is_main, desc=f"[{cat}] test", keep_pictures=args.visualize)
        with results_lock(paths, cat, f"-c test -r {args.run_name} --category {cat}", take=dist.is_main):
            if args.visualize:
                write_panels(paths.visualizations(cat), out, settings.mode)
            tested[cat] = Tested(out.metrics, published_figures(args.dataset, settings.mode, cat))
            if dist.is_main:
                _record(args, cat, paths, settings.meta, out, test_set, settings.mode)
    return tested


def run_test(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``-c test`` for ``--category`` (one or all), then the table and the original's AVG line."""
    dist, device = init_distributed(args.device)
    try:
        paths = RunPaths(args.log_path, args.run_name)
        paths.require_models()
        categories = resolve_categories(args.dataset, args.data_path, args.category)
        tested = test_categories(args, categories, paths, device, dist)
        rows = {c: t.metrics for c, t in tested.items()}
        if dist.is_main:
            print()
            print(markdown_table(rows, {c: t.published for c, t in tested.items()}))
            print(avg_line(rows))
        return rows
    finally:
        shutdown(dist)
