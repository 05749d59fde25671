"""Where a run keeps its files, its meta side files, and opening the network it trained.

Layout of ``<log-path>/<run-name>/``::

    models/<category>_model.pkl      weights only, the released checkpoints' format
                                     (a state dict whose keys start with ``model.``)
    models/<category>_meta.json      side file: network config, image size, depth range,
                                     epoch, decision threshold from -c test
    models/<category>_state_e<N>.pt  training state for --resume (last --keep-last kept)
    tensorboard/<category>/          TensorBoard logs
    results/<category>/              per-image CSV, summary JSON, curves, pictures
    output.csv                       one row per evaluated category (appended)

Every file is written atomically (temporary file + rename).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import CheckpointError, load_network_file, save_released
from models.modes import base_width as base_width_for, network_width
from models.runtime import RuntimeOptions
from models.unet import TransFusionUNet, UNetConfig
from utils.atomic import atomic_write_json
from utils.errors import TransFusionError


class RunPaths:
    def __init__(self, log_path: str | Path, run_name: str) -> None:
        self.root = Path(log_path) / run_name

    @property
    def models(self) -> Path:
        return self.root / "models"

    def weights(self, category: str) -> Path:
        return self.models / f"{category}_model.pkl"

    def meta(self, category: str) -> Path:
        return self.models / f"{category}_meta.json"

    def train_state(self, category: str, epoch: int, batch: int = 0) -> Path:
        """Training state after ``epoch`` full epochs and ``batch`` batches of the next one."""
        return self.models / f"{category}_state_e{epoch:05d}_b{batch:05d}.pt"

    def train_states(self, category: str) -> list[Path]:
        """Saved training states, oldest (fewest steps) first."""
        pat = re.compile(rf"^{re.escape(category)}_state_e(\d+)_b(\d+)\.pt$")
        found = []
        if self.models.is_dir():
            for p in self.models.iterdir():
                m = pat.match(p.name)
                if m:
                    found.append(((int(m.group(1)), int(m.group(2))), p))
        return [p for _, p in sorted(found)]

    def tensorboard(self, category: str) -> Path:
        return self.root / "tensorboard" / category

    def results(self, category: str) -> Path:
        return self.root / "results" / category

    @property
    def output_csv(self) -> Path:
        return self.root / "output.csv"

    def fg_mask_cache(self, category: str) -> Path:
        return self.root / "fg_masks" / category


def save_weights(paths: RunPaths, category: str, net: torch.nn.Module, meta: dict[str, Any]) -> None:
    """The released-format weights, then the meta side file (both atomic)."""
    save_released(net, paths.weights(category))
    atomic_write_json(paths.meta(category), meta)


def read_meta(paths: RunPaths, category: str) -> dict[str, Any]:
    p = paths.meta(category)
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TransFusionError(f"{p} is unreadable ({exc}); delete it to fall back to the weights alone") from None


def update_meta(paths: RunPaths, category: str, **values: Any) -> None:
    meta = read_meta(paths, category)
    meta.update(values)
    atomic_write_json(paths.meta(category), meta)


def build_meta(cfg: UNetConfig, args: Any, epoch: int, depth_norm: tuple[float, float] | None) -> dict[str, Any]:
    return {
        "unet": asdict(cfg),
        "img_size": args.img_size,
        "diffusion_num_steps": args.diffusion_num_steps,
        "dataset": args.dataset,
        "depth_norm": list(depth_norm) if depth_norm else None,
        "epoch": epoch,
        "seed": args.seed,
    }


def check_arch_matches(cfg: UNetConfig, mode: str, base_width: int | None, path: Path) -> None:
    """Refuse a checkpoint whose mode or width disagrees with --mode / --unet-channel-num.

    ``base_width`` is the ``--unet-channel-num`` N the user gave (None: not given, not checked);
    rgbd networks have 2N channels (models/modes.py), so N = 64 matches a released rgbd
    checkpoint of 128 channels.
    """
    if mode == cfg.mode and (base_width is None or network_width(mode, base_width) == cfg.n_channels):
        return
    asked = f"--mode {mode}" + (f" --unet-channel-num {base_width}" if base_width is not None else "")
    rule = " (rgbd networks have 2N channels for --unet-channel-num N)" if "rgbd" in (mode, cfg.mode) else ""
    raise TransFusionError(
        f"{path} holds a {cfg.mode} network with {cfg.n_channels} channels but {asked} was given{rule}; "
        f"run with --mode {cfg.mode} --unet-channel-num {base_width_for(cfg.mode, cfg.n_channels)}")


def load_network(paths: RunPaths, category: str, mode: str, base_width: int | None, runtime: RuntimeOptions,
                 device: torch.device) -> tuple[TransFusionUNet, dict[str, Any]]:
    """Load a run's ``<category>_model.pkl`` safely (architecture from the file), check it against
    the flags, and place it on ``device`` in eval mode; also the category's meta."""
    path = paths.weights(category)
    try:
        net = load_network_file(path)
    except CheckpointError as exc:
        if paths.train_states(category) and path.exists():
            # the run's own weights: its newest training state holds them too
            raise exc.with_hint(f"this run has training states: continue with -c train -r {paths.root.name} "
                                f"--category {category} --resume, which rewrites the weights") from None
        raise
    check_arch_matches(net.cfg, mode, base_width, path)
    return runtime.place(net, device).eval(), read_meta(paths, category)
