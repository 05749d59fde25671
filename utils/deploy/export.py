"""``-c export``: a run's network as ONNX, verified against PyTorch, with what runs around it.

Writes ``models/<category>.onnx`` (utils/deploy/onnx_export.py: dynamic batch, the run's image size,
refused unless ONNX Runtime reproduces PyTorch's outputs on a probe batch) and
``models/<category>_onnx.json`` (utils/deploy/onnx_files.py: β, the step schedule, mode, smoothing kernel
and weight, depth range, threshold). The architecture and mode are the checkpoint's; the step
options (--eval-steps, --early-stop, --eval-kernel-size, --eval-w) and --threshold are recorded as
given. ``Detector.from_run(..., backend="onnxruntime")`` and ``-c predict --backend onnxruntime``
run the exported network.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import replace
from typing import Any

import torch

from models.conditioning import ClassConditionedUNet
from models.runtime import RuntimeOptions
from models.scoring import DEFAULT_SCORING
from utils.core.atomic import atomic_write_json
from utils.core.errors import TransFusionError
from utils.deploy.onnx_export import export_network
from utils.deploy.onnx_files import sidecar
from utils.run.meta import category_view, network_for
from utils.run.network import open_network
from utils.run.paths import RunPaths
from utils.run.settings import Requested, scoring_from
from utils.run.thresholds import Threshold, choose_threshold, schedule_note


def export_onnx(run_dir: str | os.PathLike, category: str, *, eval_steps: int | None = None,
                early_stop: int | None = None, kernel_size: int = DEFAULT_SCORING.kernel_size,
                weight: float = DEFAULT_SCORING.weight, threshold: float | Threshold | None = None,
                image_size: int | None = None, diffusion_steps: int | None = None,
                requested: Requested | None = None) -> dict[str, Any]:
    """Export ``category`` of the run folder ``run_dir``; returns what ``<category>_onnx.json`` holds.

    The keywords are those of `Detector.from_run` that the JSON records (the network itself does
    not depend on them); the image size and T are the run's (utils/run/settings.py)."""
    paths = RunPaths.at(run_dir)
    scoring = scoring_from(kernel_size, weight, eval_steps, early_stop)
    requested = replace(requested, eval_steps=scoring.eval_steps) if requested else \
        Requested.from_keywords(image_size, diffusion_steps, scoring.eval_steps)
    network, view = network_for(paths, category)  # a category of a multi-class run: its network, its threshold
    net, settings = open_network(paths, network, requested, RuntimeOptions(), torch.device("cpu"))
    for note in settings.notes:
        print(note)
    classes = list(net.categories) if isinstance(net, ClassConditionedUNet) else None
    if classes and view is None:
        raise TransFusionError(f"{paths.class_embedding(network)}: the network is class-conditioned; name the category "
                               f"whose threshold the export records with --category C (one of {', '.join(classes)}): "
                               f"the graph takes every category's row as an input")
    check = export_network(net, paths.onnx(network), settings.image_size, settings.num_steps)
    chosen = choose_threshold(category_view(settings.meta, view), settings.meta_path, threshold)
    record = sidecar(paths, network, net.cfg, settings, scoring, chosen, check, classes)
    if view:
        record["threshold_category"] = view
    atomic_write_json(paths.onnx_meta(network), record)
    return record


def _categories(paths: RunPaths, category: str) -> list[str]:
    paths.require_models()
    found = paths.categories()
    if category == "all":
        if not found:
            raise TransFusionError(f"{paths.models} holds no <category>_model.pkl to export")
        return found
    return [category]


def run_export(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``-c export -r RUN --category C|all``: one .onnx and one _onnx.json per category, each said on a line."""
    from utils.run.thresholds import explicit_threshold

    paths = RunPaths(args.log_path, args.run_name)
    records = []
    for category in _categories(paths, args.category):
        print(f"[{category}] exporting and checking against PyTorch...", flush=True)
        record = export_onnx(paths.root, category, eval_steps=args.eval_steps, early_stop=args.early_stop,
                             kernel_size=args.eval_kernel_size, weight=args.eval_w,
                             threshold=None if args.threshold is None else explicit_threshold(args.threshold),
                             requested=Requested.from_args(args))
        worst = max(record["check"]["max_abs_diff"].values())
        network = record["category"]  # the network's key: the category itself, or "multiclass"
        print(f"[{category}] {paths.onnx(network)}: {record['mode']} network at {record['image_size']} px, dynamic "
              f"batch; ONNX Runtime within {worst:.1e} of PyTorch on a probe batch; settings in "
              f"{paths.onnx_meta(network).name}")
        t = record["threshold"]
        if t is None:
            print(f"[{category}] no decision threshold stored (run -c calibrate or -c test): the JSON holds none")
        else:
            print(f"[{category}] threshold: {t['kind']} {t['value']:.6f} ({t['rule']})")
            note = schedule_note(Threshold(t["value"], t["kind"], t["strict"], t["source"], t["schedule"]),
                                 record["schedule"])
            if note:
                print(f"[{category}] {note}")
        records.append(record)
    return records
