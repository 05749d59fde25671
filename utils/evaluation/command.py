"""``-c test`` and ``-c test_multiclass``: score a run's network on test sets and write the results.

``-c test`` evaluates each category's own network on that category's test set; ``-c
test_multiclass`` evaluates the run's one multi-class network (``models/*_model.pkl``,
docs/method.md §10) on every category of its union, then closes with the original's line of four
means. Both write, per category, the same files and pages (results/<category>/, or
results/multiclass/<category>/ for the multi-class network), rows of output.csv and the
published figures beside ours where a published run matches.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from data.datasets import TestDataset
from data.discovery import find_test_samples, resolve_categories, scan_category
from models.conditioning import ClassConditionedUNet, OneCategory
from models.modes import has_depth
from utils.core.errors import TransFusionError
from utils.evaluation.loop import EvalOutput, EvalSettings, evaluate
from utils.evaluation.metrics import f1_max
from utils.evaluation.mvtec_ad2 import protocol, protocol_line, validation_threshold
from utils.evaluation.pages import page_facts, threshold_lines, write_run_index, write_test_report
from utils.evaluation.results import heat_map_range, write_panels, write_results
from utils.machine.distributed import SINGLE, Dist, init_distributed, shutdown
from utils.reports.output_csv import AVERAGE_ROW, append_output_csv
from utils.reports.published import (
    Comparison,
    compare,
    compare_mean,
    published_figures,
    published_table,
    settings_differences,
    union_difference,
)
from utils.reports.tables import avg_line, fmt_pct, markdown_table, mean_metrics
from utils.run.meta import category_view, read_meta, update_category_meta, update_meta
from utils.run.network import open_network
from utils.run.ownership import results_lock
from utils.run.paths import MULTICLASS, RunPaths
from utils.run.settings import Requested, RunSettings, runtime_options, scoring_options, training_depth_range
from utils.run.thresholds import Threshold, calibrated_threshold, schedule_note


def eval_settings(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings(scoring=scoring_options(args), runtime=runtime_options(args), batch_size=args.eval_bs,
                        workers=args.workers)


@dataclass(frozen=True)
class Target:
    """What one test scores: a network of the run (its key: the category itself, or MULTICLASS) on
    one category's test set."""

    network: str
    category: str

    @property
    def of(self) -> str | None:
        """Where its results go: results/<category>/ (None), or results/multiclass/<category>/."""
        return None if self.network == self.category else self.network

    @property
    def label(self) -> str:
        """How lines and pages name it: ``bottle``, or ``multiclass/bottle``."""
        return self.category if self.of is None else f"{self.network}/{self.category}"


@dataclass
class Tested:
    """One category's test: its metrics and the published figures they were compared with."""

    metrics: dict[str, Any]
    published: dict[str, float] | None


def test_set_for(args: argparse.Namespace, settings: RunSettings, category: str) -> TestDataset:
    """``category``'s test set at the run's image size, depth scaled with the run's range."""
    if has_depth(settings.mode) and args.dataset != "mvtec3d":
        raise TransFusionError(f"{settings.meta_path.parent}: {settings.category} is a {settings.mode} network, "
                               f"which needs depth: test it with -ds mvtec3d")
    if not find_test_samples(args.dataset, args.data_path, category):
        raise TransFusionError(f"category {category} has no test images under {args.data_path}; "
                               f"-c test needs a test set (use -c predict for unlabelled images)")
    return TestDataset(args.dataset, args.data_path, category, settings.mode, settings.image_size,
                       depth_norm=settings.depth_norm)


def _thresholds(args: argparse.Namespace, target: Target, meta: dict[str, Any], meta_path: Any,
                out: EvalOutput) -> tuple[Threshold | None, list[Threshold], list[str]]:
    """The threshold that decides (the calibrated one if the run has it, else this test's F1-max, as
    -c predict would choose), every candidate, and notes about them."""
    schedule = scoring_options(args).schedule()
    f1 = None if out.metrics.get("image_f1_threshold") is None else Threshold(
        float(out.metrics["image_f1_threshold"]), "F1-max", False,
        f"F1-max on this test set, stored in {meta_path}", schedule)
    calibrated = calibrated_threshold(category_view(meta, target.category), meta_path)
    in_use = calibrated or f1
    notes = [n for n in [schedule_note(in_use, schedule) if in_use else None] if n]
    return in_use, [t for t in (calibrated, f1) if t is not None], notes


def _published(args: argparse.Namespace, target: Target, mode: str,
               out: EvalOutput) -> tuple[Comparison | None, str | None, list[str]]:
    """The published run's figures beside ours where dataset, mode, category and kind of run match,
    their source, and a note when this test scores differently from the way they were made."""
    multiclass = target.of is not None
    comparison = compare(out.metrics, published_figures(args.dataset, mode, target.category, multiclass))
    if comparison is None:
        return None, None, []
    differ = settings_differences(args.dataset, args.eval_w, args.eval_kernel_size, scoring_options(args).schedule())
    notes = [f"note: the published figures were made with the original scoring; this test differs: "
             f"{', '.join(differ)}"] if differ else []
    return comparison, published_table(args.dataset, multiclass).source, notes  # type: ignore[union-attr]


def _record(args: argparse.Namespace, target: Target, paths: RunPaths, settings: RunSettings, out: EvalOutput,
            test_set: TestDataset, extra: dict[str, Any] | None = None) -> None:
    """Rank 0: result files (decisions, published figures and Δ), the stored threshold and heat-map
    scale, the output.csv row, the category's report.html and the index page. ``extra``: more
    summary.json entries (MVTec AD 2's protocol)."""
    network, category, mode, meta = target.network, target.category, settings.mode, settings.meta
    results = paths.results(category, target.of)
    in_use, candidates, notes = _thresholds(args, target, meta, paths.meta(network), out)
    decisions = [in_use.decide(float(s)) for s in out.scores] if in_use else None
    comparison, source, published_notes = _published(args, target, mode, out)
    notes += published_notes
    summary = {
        "run": args.run_name, "category": category, "network": network, "dataset": args.dataset, "mode": mode,
        "checkpoint": str(paths.weights(network)), "epoch": meta.get("epoch"), "fg_masks": meta.get("fg_masks"),
        "schedule": scoring_options(args).schedule(),
        "published": comparison.published if comparison else None, "delta": comparison.delta if comparison else None,
        "published_source": source, "decision_threshold": in_use.as_dict() if in_use else None,
        "thresholds": [t.as_dict() for t in candidates],
        "n_mistakes": None if decisions is None else int(sum((d == "defect") != bool(y)
                                                             for d, y in zip(decisions, out.labels))),
        "config": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))},
        **(extra or {}),
    }
    write_results(out, results, summary, decisions)
    map_range = heat_map_range(out.maps)
    if out.metrics.get("image_f1_threshold") is not None:
        # a threshold is only valid for the step schedule that made the scores
        update_category_meta(paths, network, category, f1_threshold=out.metrics["image_f1_threshold"],
                             f1_schedule=scoring_options(args).schedule(), map_range=list(map_range))
    append_output_csv(paths.output_csv, args.run_name, category, meta.get("epoch", "released"), out.metrics,
                      comparison, network)
    for note in notes:
        print(f"[{target.label}] {note}")
    summary.update(n_images=len(out.scores), n_anomalous=int(out.labels.sum()))
    title = f"{args.run_name} / {target.label.replace('/', ' / ')}"
    report = write_test_report(results, title, out, test_set, mode, page_facts(args.run_name, target.label, summary),
                               threshold_lines(candidates, in_use, out.scores, out.labels), decisions, comparison,
                               source, map_range, notes, progress=not args.quiet,
                               mvtec_ad2=(extra or {}).get("mvtec_ad2"))
    write_run_index(paths.results_index(target.of), args.run_name)
    print(f"[{target.label}] image AUROC {fmt_pct(out.metrics['image_auroc'])}, AUPRO "
          f"{fmt_pct(out.metrics['aupro'])}, {out.seconds / max(1, len(out.scores)):.2f} s/image; results in "
          f"{results} (open {report})")


def _test_one(args: argparse.Namespace, target: Target, paths: RunPaths, net: torch.nn.Module,
              settings: RunSettings, device: torch.device, dist: Dist) -> tuple[Tested, EvalOutput]:
    """One category's test set scored by ``net``; rank 0 records it."""
    cat = target.category
    test_set = test_set_for(args, settings, cat)
    if dist.is_main:
        print(scan_category(args.dataset, args.data_path, cat, train=False).line())
    out = evaluate(net, settings.process, test_set, device, eval_settings(args), dist=dist,
                   progress=not args.quiet and dist.is_main, desc=f"[{target.label}] test", keep_pictures=args.visualize)
    extra = None
    if args.dataset == "mvtec_ad2" and dist.is_main:
        validation = validation_threshold(net, settings.process, test_set, args.data_path, device, eval_settings(args),
                                          progress=not args.quiet)
        calibrated = calibrated_threshold(category_view(settings.meta, cat), paths.meta(target.network))
        extra = {"mvtec_ad2": protocol(out, test_set, validation, calibrated, progress=not args.quiet)}
        print(protocol_line(target.label, extra["mvtec_ad2"]))
    with results_lock(paths, target.network, f"-c test -r {args.run_name} --category {cat}", take=dist.is_main):
        if args.visualize:
            write_panels(paths.visualizations(cat, target.of), out, settings.mode)
        if dist.is_main:
            _record(args, target, paths, settings, out, test_set, extra)
    return Tested(out.metrics, published_figures(args.dataset, settings.mode, cat, target.of is not None)), out


def test_categories(args: argparse.Namespace, categories: list[str], paths: RunPaths,
                    device: torch.device, dist: Dist = SINGLE) -> dict[str, Tested]:
    """Evaluate each category's own network with the run's own settings (utils/run/settings.py);
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
        tested[cat], _ = _test_one(args, Target(cat, cat), paths, runtime.callable(net), settings, device, dist)
    return tested


def multiclass_categories(args: argparse.Namespace, meta: dict[str, Any]) -> list[str]:
    """The categories a multi-class network is tested on: those named by --category, else the union
    it was trained on (its meta), else (released weights) the dataset's categories under -d."""
    if args.category != "all":
        return resolve_categories(args.dataset, args.data_path, args.category)
    if meta.get("categories"):
        return [str(c) for c in meta["categories"]]
    return resolve_categories(args.dataset, args.data_path, "all")


def _row(net: ClassConditionedUNet, category: str, paths: RunPaths) -> int:
    """The class-conditioned network's row of ``category``, or a one-line error."""
    try:
        return net.index(category)
    except ValueError as exc:
        raise TransFusionError(f"{paths.class_embedding(MULTICLASS)}: {exc}; a class-conditioned network scores "
                               f"only the categories it was trained on") from None


def _record_union(args: argparse.Namespace, paths: RunPaths, outputs: dict[str, EvalOutput],
                  tested: dict[str, Tested], epoch: Any) -> None:
    """Rank 0, after every category: the Average row of output.csv and, for -c predict without a
    category, the F1-max threshold and heat-map scale of the union's pooled test images."""
    rows = {c: t.metrics for c, t in tested.items()}
    comparison = compare_mean(rows, {c: t.published for c, t in tested.items()})
    append_output_csv(paths.output_csv, args.run_name, AVERAGE_ROW, epoch, mean_metrics(rows), comparison, MULTICLASS)
    scores = np.concatenate([o.scores for o in outputs.values()])
    labels = np.concatenate([o.labels for o in outputs.values()])
    pooled = f1_max(scores, labels)
    if pooled is not None:
        ranges = [heat_map_range(o.maps) for o in outputs.values()]
        update_meta(paths, MULTICLASS, f1_threshold=pooled[1], f1_schedule=scoring_options(args).schedule(),
                    map_range=[float(np.median([r[0] for r in ranges])), max(r[1] for r in ranges)])


def test_multiclass(args: argparse.Namespace, paths: RunPaths, device: torch.device,
                    dist: Dist = SINGLE) -> dict[str, Tested]:
    """The run's multi-class network on every category of its union (or those named): the same files
    as -c test per category, under results/multiclass/, then the Average row."""
    runtime = runtime_options(args)
    categories = multiclass_categories(args, read_meta(paths, MULTICLASS))
    net, settings = open_network(paths, MULTICLASS, Requested.from_args(args), runtime, device,
                                 training_depth_range(args, categories))
    if dist.is_main:
        print(f"testing the multi-class network {paths.weights(MULTICLASS)} on {len(categories)} "
              f"categor{'y' if len(categories) == 1 else 'ies'}: {', '.join(categories)}")
        for note in [*settings.notes, union_difference(args.dataset, categories)]:
            if note:
                print(note)
    forward = runtime.callable(net)
    tested, outputs = {}, {}
    for cat in categories:
        scorer = forward if not isinstance(net, ClassConditionedUNet) else OneCategory(forward, _row(net, cat, paths))
        tested[cat], outputs[cat] = _test_one(args, Target(MULTICLASS, cat), paths, scorer, settings, device, dist)
    if dist.is_main:
        _record_union(args, paths, outputs, tested, settings.meta.get("epoch", "released"))
    return tested


def _print_table(tested: dict[str, Tested], pixel_line: bool) -> dict[str, dict[str, Any]]:
    rows = {c: t.metrics for c, t in tested.items()}
    print()
    print(markdown_table(rows, {c: t.published for c, t in tested.items()}))
    print(avg_line(rows, pixel=pixel_line))
    return rows


def run_test(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``-c test`` for ``--category`` (one or all), then the table and the original's AVG line."""
    dist, device = init_distributed(args.device)
    try:
        paths = RunPaths(args.log_path, args.run_name)
        paths.require_models()
        if paths.categories() == [MULTICLASS]:
            raise TransFusionError(f"run {paths.root} holds one multi-class network ({paths.weights(MULTICLASS)}), not "
                                   f"one per category: test it with -c test_multiclass -r {args.run_name}")
        categories = resolve_categories(args.dataset, args.data_path, args.category)
        tested = test_categories(args, categories, paths, device, dist)
        return _print_table(tested, pixel_line=False) if dist.is_main else {c: t.metrics for c, t in tested.items()}
    finally:
        shutdown(dist)


def run_test_multiclass(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``-c test_multiclass``: the table and the original's closing line
    ``AVG AUROC: a, AVG AUPRO: b, AVG AUROC PIX: c, AVG AP PIX: d``."""
    dist, device = init_distributed(args.device)
    try:
        paths = RunPaths(args.log_path, args.run_name)
        paths.require_weights(MULTICLASS)
        tested = test_multiclass(args, paths, device, dist)
        return _print_table(tested, pixel_line=True) if dist.is_main else {c: t.metrics for c, t in tested.items()}
    finally:
        shutdown(dist)
