"""What -c predict and -c calibrate score: the images a flag names, and the run's detector opened
with the command line's options (`Detector.from_run`, utils/inference/detector.py)."""
from __future__ import annotations

import argparse
import glob
from pathlib import Path

import torch

from data.catalog import IMAGE_EXTENSIONS
from utils.core.errors import TransFusionError
from utils.inference.detector import Detector
from utils.run.paths import RunPaths
from utils.run.settings import DepthSource, Requested
from utils.run.thresholds import explicit_threshold


def collect_inputs(spec: str) -> list[Path]:
    """An image file, a folder (its images, sorted) or a glob pattern."""
    p = Path(spec).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise TransFusionError(f"--input folder {p} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return files
    matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
    if not matches:
        raise TransFusionError(f"--input {spec} is neither an image, a folder nor a glob that matches files")
    return matches


def open_detector(args: argparse.Namespace, paths: RunPaths, category: str, device: torch.device,
                  depth_from_training: DepthSource | None = None) -> Detector:
    """`Detector.from_run` with the command line's options; the run's own settings, with the flags
    given explicitly checked against them (utils/run/settings.py)."""
    return Detector.from_run(
        paths.root, category, device=None if args.device is None else str(device), amp=args.amp,
        memory_format=args.memory_format, compile=args.compile, eval_steps=args.eval_steps,
        early_stop=args.early_stop, kernel_size=args.eval_kernel_size, weight=args.eval_w,
        threshold=None if args.threshold is None else explicit_threshold(args.threshold),
        backend=args.backend, batch_size=args.eval_bs, requested=Requested.from_args(args),
        depth_from_training=depth_from_training)
