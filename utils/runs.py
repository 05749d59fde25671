"""Where a run keeps its files, and saving/loading its checkpoints.

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

from models.modes import network_width
from models.unet import TransFusionUNet, UNetConfig
from utils.atomic import atomic_torch_save, atomic_write_json
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


def unet_config_from_args(args: Any) -> UNetConfig:
    try:
        return UNetConfig(mode=args.mode, n_channels=network_width(args.mode, args.unet_channel_num),
                          ch_mults=tuple(args.unet_ch_mults), attn=tuple(args.unet_attn),
                          group_conv=tuple(args.unet_group_conv), n_blocks=args.unet_n_blocks)
    except ValueError as exc:
        raise TransFusionError(str(exc)) from None


def cpu_state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the network's state, contiguous: a saved file must not depend on the
    --memory-format the network ran with."""
    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
            for k, v in net.state_dict().items()}


def unet_state_dict_released(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The network's weights in the released layout (``model.`` prefix), on the CPU."""
    return {f"model.{k}": v for k, v in cpu_state_dict(net).items()}


def save_weights(paths: RunPaths, category: str, net: torch.nn.Module, meta: dict[str, Any]) -> None:
    atomic_torch_save(unet_state_dict_released(net), paths.weights(category))
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


def load_network(paths: RunPaths, category: str, args: Any, device: torch.device
                 ) -> tuple[TransFusionUNet, dict[str, Any]]:
    """Load ``<category>_model.pkl`` safely; the architecture comes from the file itself."""
    from utils.speed import apply_memory_format
    from models.checkpoint import (check_arch_matches, infer_arch, load_state_dict_file,
                                   validate_against_model)

    path = paths.weights(category)
    state = load_state_dict_file(path)
    arch = infer_arch(state, path)
    explicit_channels = args.unet_channel_num if getattr(args, "unet_channel_num_given", False) else None
    check_arch_matches(arch, args.mode, explicit_channels, path)
    meta = read_meta(paths, category)
    cfg = UNetConfig(**asdict(arch))
    net = TransFusionUNet(cfg)
    stripped = {k.removeprefix("model."): v for k, v in state.items()}
    validate_against_model(stripped, net, path)
    net.load_state_dict(stripped)
    net = apply_memory_format(net.to(device), args.memory_format)
    return net.eval(), meta
