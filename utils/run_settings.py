"""What a run says about scoring its images, and the Python API's keywords as option objects.

The Detector (utils/detector.py) and -c export (utils/export.py) resolve a run's image size, T,
depth range and decision threshold here, the way the command line always has.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.modes import has_depth
from models.runtime import BACKENDS, RuntimeOptions
from models.scoring import ScoringOptions
from utils.config import DEFAULT_DIFFUSION_STEPS, DEFAULT_IMG_SIZE
from utils.errors import TransFusionError
from utils.runs import RunPaths, read_meta
from utils.thresholds import Threshold, choose_threshold


@dataclass(frozen=True)
class RunSettings:
    """What a run's meta says about scoring its images, resolved as the command line resolves it."""

    meta: dict[str, Any]
    meta_path: Path
    image_size: int
    num_steps: int
    depth_norm: tuple[float, float] | None
    threshold: Threshold | None


def run_settings(paths: RunPaths, category: str, mode: str, image_size: int | None = None,
                 diffusion_steps: int | None = None, threshold: float | Threshold | None = None) -> RunSettings:
    """The run's image size and T (the meta's; else those given; else the paper's), its depth range
    (needed in depth modes) and the threshold that decides (utils/thresholds.choose_threshold)."""
    meta = read_meta(paths, category)
    meta_path = paths.meta(category)
    size = int(meta.get("img_size") or image_size or DEFAULT_IMG_SIZE)
    steps = int(meta.get("diffusion_num_steps") or diffusion_steps or DEFAULT_DIFFUSION_STEPS)
    depth_norm = tuple(float(v) for v in meta["depth_norm"]) if meta.get("depth_norm") else None
    if has_depth(mode) and depth_norm is None:
        raise TransFusionError(f"{meta_path} has no depth range; run -c test on this run once "
                               f"(it needs the training set) before predicting or exporting in mode {mode}")
    return RunSettings(meta, meta_path, size, steps, depth_norm,  # type: ignore[arg-type]
                       choose_threshold(meta, meta_path, threshold))


def scoring_from(kernel_size: int, weight: float, eval_steps: int | None, early_stop: int | None) -> ScoringOptions:
    """The scoring keywords as `ScoringOptions`, checked as the command line's flags are."""
    if int(kernel_size) != kernel_size or kernel_size < 1:
        raise TransFusionError(f"kernel_size must be an integer >= 1, got {kernel_size!r}")
    if not 0 <= weight <= 1:
        raise TransFusionError(f"weight (of the discriminative map) must be in [0, 1], got {weight!r}")
    if early_stop is not None and (int(early_stop) != early_stop or early_stop < 1):
        raise TransFusionError(f"early_stop must be an integer >= 1 (or None: never), got {early_stop!r}")
    return ScoringOptions(kernel_size=int(kernel_size), weight=float(weight), eval_steps=eval_steps,
                          early_stop=early_stop)


def runtime_from(backend: str, amp: str, memory_format: str, compile: bool) -> RuntimeOptions:
    """The runtime keywords as `RuntimeOptions`, refusing those the onnxruntime backend cannot honour."""
    if backend not in BACKENDS:
        raise TransFusionError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    try:
        runtime = RuntimeOptions(amp=amp, memory_format=memory_format, compile=compile)
    except ValueError as exc:
        raise TransFusionError(str(exc)) from None
    if backend == "onnxruntime" and runtime.changed():
        given = ", ".join(f"{k}={v!r}" for k, v in runtime.changed().items())
        raise TransFusionError(f"{given} means nothing with backend='onnxruntime' (ONNX Runtime runs the exported "
                               f"float32 network on the CPU); leave it out, or use backend='torch'")
    return runtime
