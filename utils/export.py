"""``-c export``: a run's network as ONNX, verified against PyTorch, with what runs around it.

Writes ``models/<category>.onnx`` (models/onnx_export.py: dynamic batch, the run's image size,
refused unless ONNX Runtime reproduces PyTorch's outputs on a probe batch) and
``models/<category>_onnx.json`` (utils/onnx_files.py: β, the step schedule, mode, smoothing kernel
and weight, depth range, threshold). The architecture and mode are the checkpoint's; the step
options (--eval-steps, --early-stop, --eval-kernel-size, --eval-w) and --threshold are recorded as
given. ``Detector.from_run(..., backend="onnxruntime")`` and ``-c predict --backend onnxruntime``
run the exported network.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

import torch

from models.onnx_export import export_network
from models.runtime import RuntimeOptions
from utils.atomic import atomic_write_json
from utils.errors import TransFusionError
from utils.onnx_files import sidecar
from utils.run_settings import run_settings, scoring_from
from utils.runs import RunPaths, load_network
from utils.thresholds import Threshold, schedule_note


def export_onnx(run_dir: str | os.PathLike, category: str, *, eval_steps: int | None = None,
                early_stop: int | None = None, kernel_size: int = 7, weight: float = 0.95,
                threshold: float | Threshold | None = None, image_size: int | None = None,
                diffusion_steps: int | None = None) -> dict[str, Any]:
    """Export ``category`` of the run folder ``run_dir``; returns what ``<category>_onnx.json`` holds.

    The keywords are those of `Detector.from_run` that the JSON records (the network itself does
    not depend on them)."""
    from utils.testing import checked_process

    paths = RunPaths.at(run_dir)
    if not paths.has_weights(category):
        found = paths.categories() if paths.models.is_dir() else []
        raise TransFusionError(f"run {paths.root} has no weights for category {category!r} (it holds "
                               f"{', '.join(found) if found else 'none'})")
    scoring = scoring_from(kernel_size, weight, eval_steps, early_stop)
    net, _ = load_network(paths, category, None, None, RuntimeOptions(), torch.device("cpu"))
    settings = run_settings(paths, category, net.cfg.mode, image_size, diffusion_steps, threshold)
    process = checked_process(settings.num_steps, net.cfg.mode, scoring.eval_steps, settings.meta_path)
    check = export_network(net, paths.onnx(category), settings.image_size, settings.num_steps)
    record = sidecar(paths, category, net.cfg, process, settings, scoring, check)
    atomic_write_json(paths.onnx_meta(category), record)
    return record


def _categories(paths: RunPaths, category: str) -> list[str]:
    if not paths.models.is_dir():
        raise TransFusionError(f"no checkpoints in {paths.models}: train first (-c train -r {paths.root.name}) "
                               f"or fetch the released weights with scripts/download_weights.py")
    found = paths.categories()
    if category == "all":
        if not found:
            raise TransFusionError(f"{paths.models} holds no <category>_model.pkl to export")
        return found
    return [category]


def run_export(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``-c export -r RUN --category C|all``: one .onnx and one _onnx.json per category, each said on a line."""
    from utils.thresholds import explicit_threshold

    paths = RunPaths(args.log_path, args.run_name)
    records = []
    for category in _categories(paths, args.category):
        print(f"[{category}] exporting and checking against PyTorch...", flush=True)
        record = export_onnx(paths.root, category, eval_steps=args.eval_steps, early_stop=args.early_stop,
                             kernel_size=args.eval_kernel_size, weight=args.eval_w,
                             threshold=None if args.threshold is None else explicit_threshold(args.threshold),
                             image_size=args.img_size, diffusion_steps=args.diffusion_num_steps)
        worst = max(record["check"]["max_abs_diff"].values())
        print(f"[{category}] {paths.onnx(category)}: {record['mode']} network at {record['image_size']} px, dynamic "
              f"batch; ONNX Runtime within {worst:.1e} of PyTorch on a probe batch; settings in "
              f"{paths.onnx_meta(category).name}")
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
