"""Where a run keeps its files, its meta side files, and opening the network it trained.

Layout of ``<log-path>/<run-name>/``::

    models/<category>_model.pkl      weights only, the released checkpoints' format
                                     (a state dict whose keys start with ``model.``)
    models/<category>_meta.json      side file: network config, image size, depth range,
                                     epoch, decision threshold from -c test
    models/<category>_state_e<N>.pt  training state for --resume (last --keep-last kept)
    models/<category>.onnx           -c export: the network in ONNX (dynamic batch, the run's size)
    models/<category>_onnx.json      -c export: what the reverse process needs around it
    tensorboard/<category>/          TensorBoard logs
    results/<category>/              per-image CSV, summary JSON, curves, pictures
    output.csv                       one row per evaluated category (appended)
    models/<category>.train.lock     held by the -c train of that category (pid, host, start)
    results/<category>.lock          held by a -c test while it writes that category's results
    replaced-<time>/<category>/      what --overwrite moved aside (weights, meta, states, results)

Every file is written atomically (temporary file + rename).
"""
from __future__ import annotations

import json
import os
import re
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, ContextManager

import torch

from models.checkpoint import CheckpointError, load_network_file, save_released
from models.modes import base_width as base_width_for, network_width
from models.runtime import RuntimeOptions
from models.unet import TransFusionUNet, UNetConfig
from utils.atomic import atomic_write_json
from utils.errors import TransFusionError
from utils.locks import held


class RunPaths:
    def __init__(self, log_path: str | Path, run_name: str) -> None:
        self.root = Path(log_path) / run_name

    @classmethod
    def at(cls, run_dir: str | os.PathLike) -> "RunPaths":
        """The run folder ``run_dir`` itself (``<log-path>/<run-name>``), as the Python API names it."""
        root = Path(run_dir)
        if root.name in ("", ".", ".."):
            root = root.resolve()
        return cls(root.parent, root.name)

    @property
    def models(self) -> Path:
        return self.root / "models"

    def weights(self, category: str) -> Path:
        return self.models / f"{category}_model.pkl"

    def meta(self, category: str) -> Path:
        return self.models / f"{category}_meta.json"

    def onnx(self, category: str) -> Path:
        """-c export: the network as ONNX."""
        return self.models / f"{category}.onnx"

    def onnx_meta(self, category: str) -> Path:
        """-c export: the reverse process's settings beside the ONNX network."""
        return self.models / f"{category}_onnx.json"

    def categories(self) -> list[str]:
        """The categories this run holds weights for, sorted."""
        return sorted(p.name[: -len("_model.pkl")] for p in self.models.glob("*_model.pkl"))

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

    def calibration(self, category: str) -> Path:
        """-c calibrate's scores and record (the threshold itself goes into the meta)."""
        return self.root / "calibration" / category

    @property
    def output_csv(self) -> Path:
        return self.root / "output.csv"

    def fg_mask_cache(self, category: str) -> Path:
        return self.root / "fg_masks" / category

    def train_lock(self, category: str) -> Path:
        """Held by the one -c train that trains ``category`` in this run (utils/locks.py)."""
        return self.models / f"{category}.train.lock"

    def results_lock(self, category: str) -> Path:
        """Held while a -c test writes ``category``'s results (a training does not take it)."""
        return self.root / "results" / f"{category}.lock"

    def has_weights(self, category: str) -> bool:
        return self.weights(category).exists()

    def replaced(self, stamp: str) -> Path:
        """Where --overwrite moves what it replaces: ``replaced-<stamp>/<category>/``."""
        return self.root / f"replaced-{stamp}"


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


def trained_here(paths: RunPaths, category: str) -> bool:
    """Whether this run trained ``category`` itself: training states, or a meta written by training
    (released weights have no meta; -c test only adds its threshold to one)."""
    if paths.train_states(category):
        return True
    try:
        return "unet" in read_meta(paths, category)
    except TransFusionError:
        return False


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


def start_refusal(paths: RunPaths, categories: list[str], resume: bool, overwrite: bool) -> str | None:
    """Why a -c train must not start on these categories' existing files, or None: trained
    weights (or training states) are only continued (``resume``) or replaced (``overwrite``),
    and --resume needs a training state. Every category is looked at before anything starts,
    so one message names them all."""
    trained = [c for c in categories if paths.has_weights(c) or paths.train_states(c)]
    if resume:
        stateless = [c for c in trained if not paths.train_states(c)]
        if not stateless:
            return None
        return (f"--resume: {', '.join(stateless)} in {paths.models} {'has' if len(stateless) == 1 else 'have'} "
                f"weights but no training state to continue from (released weights, or the states were removed); "
                f"start again with --overwrite (the weights move to {paths.root}/replaced-<time>/) or test them "
                f"with -c test")
    if not trained or overwrite:
        return None
    return (f"run {paths.root} already has trained weights for {', '.join(trained)} "
            f"({paths.weights(trained[0])}{', ...' if len(trained) > 1 else ''}); add --resume to continue "
            f"training {'it' if len(trained) == 1 else 'them'}, or --overwrite to start again (the old files move "
            f"to {paths.root}/replaced-<time>/, nothing is deleted)")


# How long a -c test waits for another one writing the same category's results (seconds):
# writing takes seconds, panels with --visualize minutes at most.
RESULTS_WAIT_S = 900.0


def results_lock(paths: RunPaths, category: str, purpose: str, take: bool = True) -> ContextManager[Any]:
    """Held while writing ``category``'s results, so two -c test never write them at once (the
    second waits for the first); a training's lock is another file, so tests run beside it.
    ``take=False`` (the ranks that do not write) holds nothing."""
    if not take:
        return nullcontext()
    return held(paths.results_lock(category), purpose, wait_s=RESULTS_WAIT_S)


def replaced_stamp(paths: RunPaths) -> str:
    """A new ``replaced-<stamp>`` folder name for this run: the local time, made unique."""
    base = time.strftime("%Y%m%d-%H%M%S")
    stamp, n = base, 1
    while paths.replaced(stamp).exists():
        n += 1
        stamp = f"{base}-{n}"
    return stamp


def move_aside(paths: RunPaths, category: str, stamp: str) -> list[Path]:
    """``--overwrite``: move the category's weights, meta, training states, results, TensorBoard
    logs and calibration to ``replaced-<stamp>/<category>/`` (nothing is deleted); returns what
    was moved.

    Everything moves under the category's results lock, so the results of a -c test that is
    writing them are never pulled away (this refuses instead, before anything has moved)."""
    dest = paths.replaced(stamp) / category
    files = [p for p in (paths.weights(category), paths.meta(category), *paths.train_states(category))
             if p.exists()]
    results = paths.results(category)
    folders = [(p, name) for p, name in ((paths.tensorboard(category), "tensorboard"), (results, "results"),
                                         (paths.calibration(category), "calibration")) if p.exists()]
    moved = files + [p for p, _ in folders]
    if not moved:
        return []
    # the results lock first: a running -c test makes this refuse before anything has moved
    with held(paths.results_lock(category), "-c train --overwrite") if results.exists() else nullcontext():
        dest.mkdir(parents=True, exist_ok=True)
        for p in files:
            os.replace(p, dest / p.name)
        for p, name in folders:
            os.replace(p, dest / name)
    return moved


def check_arch_matches(cfg: UNetConfig, mode: str | None, base_width: int | None, path: Path) -> None:
    """Refuse a checkpoint whose mode or width disagrees with --mode / --unet-channel-num.

    ``base_width`` is the ``--unet-channel-num`` N the user gave (None: not given, not checked);
    rgbd networks have 2N channels (models/modes.py), so N = 64 matches a released rgbd
    checkpoint of 128 channels. ``mode`` None: nothing is checked (the Python API takes the file's).
    """
    if mode is None:  # the Python API: the checkpoint's mode, whatever it is
        return
    if mode == cfg.mode and (base_width is None or network_width(mode, base_width) == cfg.n_channels):
        return
    asked = f"--mode {mode}" + (f" --unet-channel-num {base_width}" if base_width is not None else "")
    rule = " (rgbd networks have 2N channels for --unet-channel-num N)" if "rgbd" in (mode, cfg.mode) else ""
    raise TransFusionError(
        f"{path} holds a {cfg.mode} network with {cfg.n_channels} channels but {asked} was given{rule}; "
        f"run with --mode {cfg.mode} --unet-channel-num {base_width_for(cfg.mode, cfg.n_channels)}")


def load_network(paths: RunPaths, category: str, mode: str | None, base_width: int | None, runtime: RuntimeOptions,
                 device: torch.device) -> tuple[TransFusionUNet, dict[str, Any]]:
    """Load a run's ``<category>_model.pkl`` safely (architecture from the file), check it against
    the flags, and place it on ``device`` in eval mode; also the category's meta."""
    path = paths.weights(category)
    try:
        net = load_network_file(path)
    except CheckpointError as exc:
        own = _own_weights_hint(paths, category)
        if own and path.exists():
            raise exc.with_hint(own) from None
        raise
    check_arch_matches(net.cfg, mode, base_width, path)
    return runtime.place(net, device).eval(), read_meta(paths, category)
