"""A run's trained network: saved in the released format, opened safely with its settings."""
from __future__ import annotations

from typing import Any

import torch

from models.checkpoint import (
    CheckpointError,
    load_network_file,
    save_class_embedding,
    save_released,
    with_class_embedding,
)
from models.conditioning import ClassConditionedUNet
from models.runtime import RuntimeOptions
from models.unet import TransFusionUNet
from utils.core.atomic import atomic_write_json
from utils.run.meta import read_meta
from utils.run.ownership import trained_here
from utils.run.paths import RunPaths
from utils.run.settings import DepthSource, Requested, RunSettings, resolve_settings


def save_network(paths: RunPaths, category: str, net: torch.nn.Module) -> None:
    """The released-format weights (atomic); a class-conditioned network's rows go to their side file
    first, so the weights never stand without them."""
    if isinstance(net, ClassConditionedUNet):
        save_class_embedding(net, paths.class_embedding(category))
        net = net.unet
    save_released(net, paths.weights(category))


def save_weights(paths: RunPaths, category: str, net: torch.nn.Module, meta: dict[str, Any]) -> None:
    """The network's files (`save_network`), then the meta side file (all atomic)."""
    save_network(paths, category, net)
    atomic_write_json(paths.meta(category), meta)


def _own_weights_hint(paths: RunPaths, category: str) -> str | None:
    """What to do about damaged weights that this run trained (None: not its own)."""
    again = f"-c train -r {paths.root.name} --category {category}"
    if paths.train_states(category):
        # the newest training state holds the same weights
        return f"this run has training states: {again} --resume rewrites the weights from the newest one"
    if trained_here(paths, category):
        return (f"this run trained it but keeps no training state to rebuild it from: train it again with "
                f"{again} --overwrite (the damaged file moves to {paths.root}/replaced-<time>/)")
    return None


def load_network(paths: RunPaths, category: str, runtime: RuntimeOptions,
                 device: torch.device) -> TransFusionUNet | ClassConditionedUNet:
    """A run's ``<category>_model.pkl``, loaded safely (the architecture is the file's) and placed on
    ``device`` in eval mode, class-conditioned when its class-embedding file lies beside it; damaged
    weights of the run's own training say how to rebuild them."""
    paths.require_weights(category)
    path = paths.weights(category)
    try:
        net = load_network_file(path)
    except CheckpointError as exc:
        own = _own_weights_hint(paths, category)
        if own and path.exists():
            raise exc.with_hint(own) from None
        raise
    if paths.class_embedding(category).is_file():
        net = with_class_embedding(net, paths.class_embedding(category))
    return runtime.place(net, device).eval()


def open_network(paths: RunPaths, category: str, requested: Requested, runtime: RuntimeOptions, device: torch.device,
                 depth_from_training: DepthSource | None = None
                 ) -> tuple[TransFusionUNet, RunSettings]:
    """The category's network and the settings it is scored with (utils/run/settings.py's rule);
    a damaged meta is said before the weights are loaded."""
    paths.require_weights(category)
    meta = read_meta(paths, category)
    net = load_network(paths, category, runtime, device)
    return net, resolve_settings(paths, category, meta, net.cfg, requested, depth_from_training)
