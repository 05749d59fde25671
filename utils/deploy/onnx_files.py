"""The two files -c export writes beside a run's weights, and opening them for the onnxruntime backend.

``models/<category>.onnx`` is the network (utils/deploy/onnx_export.py). ``models/<category>_onnx.json``
says what runs around it, for a program of one's own (another language, an edge box): the input
convention, β, the step schedule, the reverse update, the scoring and the decision threshold;
and, for this project, the digests of the weights it came from and of the .onnx file, so a file
that no longer matches the run (trained again, exported again, copied over) is refused.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from models.modes import depth_channels, rgb_channels
from models.scoring import ScoringOptions
from models.unet import UNetConfig
from utils.core.errors import TransFusionError
from utils.core.json_files import BadJsonFile, load_json_file
from utils.deploy.onnx_export import OPSET, ExportCheck
from utils.deploy.onnx_session import CLASS_INPUT, INPUT_NAMES, OUTPUT_NAMES, OnnxNetwork
from utils.deploy.optional_deps import optional_import
from utils.run.meta_schema import BadValue, check_range, check_steps, unet_config_of
from utils.run.paths import RunPaths
from utils.run.settings import RunSettings
from utils.run.thresholds import Threshold

FORMAT = "transfusion-onnx"
FORMAT_VERSION = 1

_REVERSE = ("x = image, mask = 0 (1 channel), acc = 0; for each (t, s) of steps: eps, x0, logits = "
            "network(concat(x, mask), t); p = sigmoid(logits) in float32; M = 1[p > 0.5]; "
            "x = x - ((beta[t] - beta[s]) / beta[t]) * M * eps, plus (beta[t] - beta[s]) * M * x0 on rgb_channels; "
            "acc += p; mask = M. Then mask_disc = acc * map_scale.multiply / map_scale.divide")
_EARLY_STOP = ("with early_stop N: an image stops once its mask M has been unchanged for N consecutive steps; "
               "each remaining step adds its last p to acc (a batch runs until its last image stops)")
_SCORING = ("display(v): rgb channels v/2 + 0.5 clipped to [0, 1], depth as is; mask_recon = mean over channels of "
            "(display(image) - display(x))^2; box(m): kernel_size x kernel_size mean filter, zero padding, 'same' "
            "size (even sizes pad one more on the leading side); final = weight * box(mask_disc) + (1 - weight) * "
            "box(mask_recon), in float64; score = max(final)")
_INPUT = {"rgb": "8-bit RGB (grey stacked to 3 channels) resized to image_size x image_size with PIL bilinear, "
                 "then (v / 255 - 0.5) * 2",
          "depth": "z of the H x W x 3 xyz point cloud, nearest resize, holes filled twice (mean of the non-zero "
                   "3x3 neighbours), (z - gmax) / (gmax - gmin) with depth_norm = [gmin, gmax], 0 where z == 0"}


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _channels(s: slice) -> list[int]:
    return list(range(s.start, s.stop))


def sidecar(paths: RunPaths, category: str, cfg: UNetConfig, settings: RunSettings, scoring: ScoringOptions,
            threshold: Threshold | None, check: ExportCheck, classes: list[str] | None = None) -> dict[str, Any]:
    """The content of ``<category>_onnx.json`` for the network just written to paths.onnx(category);
    ``classes``: a class-conditioned network's categories, in the order of their rows."""
    process = settings.process
    pairs = process.schedule(scoring.eval_steps)
    top = process.num_steps - 2
    s, c = settings.image_size, cfg.image_channels
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "category": category, "run": str(paths.root),
        "network": paths.onnx(category).name, "network_sha256": file_digest(paths.onnx(category)),
        "weights": str(paths.weights(category)), "weights_sha256": file_digest(paths.weights(category)),
        "exported": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__, "opset": OPSET,
        "check": check.as_dict(),
        "mode": cfg.mode, "unet": asdict(cfg), "image_size": s, "image_channels": c,
        "rgb_channels": _channels(rgb_channels(cfg.mode)), "depth_channels": _channels(depth_channels(cfg.mode)),
        "inputs": {INPUT_NAMES[0]: {"shape": ["batch", c + 1, s, s], "dtype": "float32",
                                    "content": "the image x (rgb_channels, depth_channels), then the 0/1 mask"},
                   INPUT_NAMES[1]: {"shape": ["batch"], "dtype": "int64", "content": "the step t of each image"},
                   **({CLASS_INPUT: {"shape": ["batch"], "dtype": "int64",
                                     "content": "each image's category, as its index in categories"}} if classes else {})},
        "class_conditioned": bool(classes), "categories": list(classes) if classes else None,
        "outputs": {OUTPUT_NAMES[0]: f"[batch, {c}, {s}, {s}] the anomaly appearance eps_hat",
                    OUTPUT_NAMES[1]: f"[batch, {c}, {s}, {s}] the normal appearance x0_hat",
                    OUTPUT_NAMES[2]: f"[batch, 1, {s}, {s}] mask logits"},
        "input_convention": _INPUT, "depth_norm": list(settings.depth_norm) if settings.depth_norm else None,
        "diffusion_num_steps": process.num_steps, "beta": process.beta.tolist(),
        "schedule": scoring.schedule(), "steps": [list(p) for p in pairs],
        "map_scale": {"multiply": 1.0 if len(pairs) == top else top / len(pairs), "divide": process.num_steps - 1},
        "reverse": _REVERSE, "early_stop": _EARLY_STOP,
        "scoring": {"kernel_size": scoring.kernel_size, "weight": scoring.weight, "rule": _SCORING},
        "threshold": threshold.as_dict() if threshold else None,
    }


def read_sidecar(paths: RunPaths, category: str) -> dict[str, Any]:
    """``<category>_onnx.json``, or a one-line error saying to export."""
    p = paths.onnx_meta(category)
    again = f"python Experiment.py -c export -r {paths.root.name} --category {category}"
    if not p.is_file():
        raise TransFusionError(f"{p} not found: the onnxruntime backend runs the exported network; export it first "
                               f"with {again}")
    try:
        side = load_json_file(p)
    except (OSError, BadJsonFile) as exc:
        raise TransFusionError(f"{p} is unreadable ({exc.strerror or exc if isinstance(exc, OSError) else exc}); "
                               f"export again with {again}") from None
    if not isinstance(side, dict) or side.get("format") != FORMAT or side.get("format_version") != FORMAT_VERSION:
        raise TransFusionError(f"{p} is not a {FORMAT} v{FORMAT_VERSION} file; export again with {again}")
    try:
        _check_sidecar(side)
    except BadValue as bad:
        raise TransFusionError(bad.line(p, f"export again with {again}")) from None
    return side


def _check_sidecar(side: dict[str, Any]) -> None:
    """The keys this project reads back from the sidecar (the rest only document the file)."""
    for key in ("network_sha256", "weights_sha256"):
        value = side.get(key)
        if not (isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
            raise BadValue((key,), value, "a SHA-256 digest (64 hexadecimal digits)")
    unet_config_of(("unet",), side.get("unet"))
    check_steps(("diffusion_num_steps",), side.get("diffusion_num_steps"))
    if side.get("depth_norm") is not None:
        check_range(("depth_norm",), side["depth_norm"], True, "the depth range the network was exported with")


@dataclass
class Exported:
    """An exported network opened for the onnxruntime backend."""

    network: OnnxNetwork
    config: UNetConfig
    sidecar: dict[str, Any]
    path: Path


def open_exported(paths: RunPaths, category: str, device: torch.device) -> Exported:
    """The run's exported network in ONNX Runtime, refused when it is not the run's current weights."""
    if device.type != "cpu":
        raise TransFusionError(f"the onnxruntime backend runs on the CPU (the onnxruntime package), not {device}; "
                               f"use device='cpu' (--device cpu), or the torch backend on {device}")
    optional_import("onnxruntime", "the onnxruntime backend")  # before the files: say what to install first
    side = read_sidecar(paths, category)
    again = f"export again with python Experiment.py -c export -r {paths.root.name} --category {category}"
    onnx = paths.onnx(category)
    if not onnx.is_file():
        raise TransFusionError(f"{onnx} not found (its {paths.onnx_meta(category).name} is there); {again}")
    if file_digest(onnx) != side.get("network_sha256"):
        raise TransFusionError(f"{onnx} is not the file {paths.onnx_meta(category).name} describes (another export "
                               f"or a copy?); {again}")
    weights = paths.weights(category)
    if weights.is_file() and file_digest(weights) != side.get("weights_sha256"):
        raise TransFusionError(f"{onnx} was exported from other weights than {weights} holds now (trained again "
                               f"since?); {again}")
    return Exported(OnnxNetwork(onnx), unet_config_of(("unet",), side["unet"]), side, onnx)


def check_matches_run(paths: RunPaths, category: str, exported: Exported, settings: RunSettings) -> None:
    """The exported file must agree with the run on what the reverse process reads from it."""
    side = exported.sidecar
    recorded = {"image size": (exported.network.image_size, settings.image_size),
                "diffusion steps T": (side.get("diffusion_num_steps"), settings.num_steps),
                "depth range": (side.get("depth_norm"), list(settings.depth_norm) if settings.depth_norm else None)}
    for what, (got, now) in recorded.items():
        if got != now:
            raise TransFusionError(f"{exported.path} was exported with {what} {got}, but the run now says {now} "
                                   f"({settings.meta_path}); export again with python Experiment.py -c export -r "
                                   f"{paths.root.name} --category {category}")
