"""Which settings a run uses: the one answer every command gets.

The command line's flags become option objects here (`unet_config`, `runtime_options`,
`scoring_options`), and a trained run's image size, T, depth range and network are resolved
here, by one rule, for -c test, -c predict, -c calibrate, -c export, `transfusion.Detector` and
the evaluation during training (`run_settings`):

1. the run's meta first (``models/<category>_meta.json``, written by training);
2. an image size asked for explicitly (``--img-size`` given on the command line, or
   ``image_size=`` to the Python API) overrides the meta's, and the run says so in one line;
3. a T or a network asked for explicitly that differs from the run's is refused with one line
   (the weights were trained for one T and one architecture: scoring them with another is
   a different model);
4. where a run has no meta (released weights), the flags, which default to the paper's values.

Checks that depend on the run (``--eval-steps`` against the run's T) are made here, once,
against what will actually run.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from models.modes import DEFAULT_BASE_WIDTH, base_width, has_depth, is_two_branch, network_width
from models.runtime import BACKENDS, RuntimeOptions
from models.scoring import ScoringOptions
from models.transparency import TransparencyProcess
from models.unet import UNetConfig
from utils.core.errors import TransFusionError
from utils.machine.resources import default_workers
from utils.run.meta import read_meta
from utils.run.paths import RunPaths

# The paper's --img-size and --diffusion-num-steps: what a run without a meta file (released
# weights) is taken to use, by the command line and the Python API alike.
DEFAULT_IMG_SIZE = 256
DEFAULT_DIFFUSION_STEPS = 20

# The --unet-* flags and the UNetConfig fields they set (--unet-channel-num is compared through
# models/modes.network_width, since rgbd networks have 2N channels).
# Where a run without a depth range takes it from: the network's mode -> (gmin, gmax).
DepthSource = Callable[[str], tuple[float, float]]

_UNET_FLAGS = {"unet_ch_mults": "ch_mults", "unet_attn": "attn", "unet_group_conv": "group_conv",
               "unet_n_blocks": "n_blocks"}
_FLAG_OF = {name: dest for dest, name in _UNET_FLAGS.items()}


def unet_config(args: argparse.Namespace) -> UNetConfig:
    """The UNet that ``--mode``, ``--unet-*`` describe (``--unet-channel-num N``: 2N in rgbd)."""
    base = DEFAULT_BASE_WIDTH if args.unet_channel_num is None else args.unet_channel_num
    try:
        return UNetConfig(mode=args.mode, n_channels=network_width(args.mode, base),
                          ch_mults=tuple(args.unet_ch_mults), attn=tuple(args.unet_attn),
                          group_conv=tuple(args.unet_group_conv), n_blocks=args.unet_n_blocks)
    except ValueError as exc:
        # the network's words for its fields, as the flags that set them
        why = re.sub(r"\b(ch_mults|attn|group_conv|n_blocks)\b", lambda m: "--" + _FLAG_OF[m.group(1)].replace("_", "-"),
                     str(exc))
        raise TransFusionError(f"--unet-* flags do not describe a valid network ({why}); "
                               f"--unet-channel-num {base} --unet-ch-mults {' '.join(map(str, args.unet_ch_mults))}"
                               ) from None


def data_workers(args: argparse.Namespace) -> int:
    """``--workers``, or where it is not given the rule of utils/machine/resources.WORKERS_RULE
    for the device ``--device`` names (by default CUDA where present, as utils/machine/distributed
    picks it; a name that is no device counts as the CPU here and is refused there)."""
    if args.workers is not None:
        return args.workers
    try:
        device_type = torch.device(args.device).type if args.device else None
    except RuntimeError:
        device_type = "cpu"
    return default_workers(device_type or ("cuda" if torch.cuda.is_available() else "cpu"))


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    """``--amp``, ``--memory-format``, ``--compile``."""
    return RuntimeOptions(amp=args.amp, memory_format=args.memory_format, compile=args.compile)


def scoring_options(args: argparse.Namespace) -> ScoringOptions:
    """``--eval-kernel-size``, ``--eval-w``, ``--eval-steps``, ``--early-stop``."""
    return ScoringOptions(kernel_size=args.eval_kernel_size, weight=args.eval_w, eval_steps=args.eval_steps,
                          early_stop=args.early_stop)


def given_flags(args: argparse.Namespace) -> frozenset[str]:
    """The destinations of the flags given on the command line (utils/Argparser.py records them);
    a Namespace built by a program of its own has none."""
    return getattr(args, "given_flags", frozenset())


@dataclass(frozen=True)
class Requested:
    """What a caller asked for explicitly (None or absent: not asked): the command line's given flags,
    or the Python API's keywords. The flags' defaults are ``fallback``: used only without a meta."""

    image_size: int | None = None
    num_steps: int | None = None
    eval_steps: int | None = None
    mode: str | None = None
    base_width: int | None = None
    unet: dict[str, Any] = field(default_factory=dict)   # UNetConfig field -> value asked for
    fallback_image_size: int = DEFAULT_IMG_SIZE
    fallback_num_steps: int = DEFAULT_DIFFUSION_STEPS

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Requested:
        """What the command line asked for: only the flags actually given count as asked."""
        given = given_flags(args)

        def asked(dest: str) -> Any:
            return getattr(args, dest) if dest in given else None

        unet = {name: (tuple(v) if isinstance(v, list) else v) for dest, name in _UNET_FLAGS.items()
                if (v := asked(dest)) is not None}
        return cls(image_size=asked("img_size"), num_steps=asked("diffusion_num_steps"), eval_steps=args.eval_steps,
                   mode=asked("mode"), base_width=asked("unet_channel_num"), unet=unet,
                   fallback_image_size=args.img_size, fallback_num_steps=args.diffusion_num_steps)

    @classmethod
    def from_keywords(cls, image_size: int | None, diffusion_steps: int | None, eval_steps: int | None) -> Requested:
        """What the Python API's keywords ask for (None: not asked; the paper's values without a meta)."""
        return cls(image_size=image_size, num_steps=diffusion_steps, eval_steps=eval_steps,
                   fallback_image_size=image_size or DEFAULT_IMG_SIZE,
                   fallback_num_steps=diffusion_steps or DEFAULT_DIFFUSION_STEPS)


@dataclass(frozen=True)
class RunSettings:
    """What one category of a run is scored with (see the module docstring for the rule)."""

    category: str
    meta: dict[str, Any]
    meta_path: Path
    config: UNetConfig
    image_size: int
    num_steps: int
    depth_norm: tuple[float, float] | None
    process: TransparencyProcess
    notes: tuple[str, ...] = ()   # lines the command says (an explicit image size that overrides the meta's)

    @property
    def mode(self) -> str:
        return self.config.mode


def check_arch_matches(cfg: UNetConfig, mode: str | None, base_width_given: int | None, path: Path | str) -> None:
    """Refuse a checkpoint whose mode or width disagrees with --mode / --unet-channel-num.

    ``base_width_given`` is the ``--unet-channel-num`` N asked for (None: not asked, not checked);
    rgbd networks have 2N channels (models/modes.py), so N = 64 matches a released rgbd
    checkpoint of 128 channels. ``mode`` None: not asked, nothing is checked."""
    if mode is None:
        return
    if mode == cfg.mode and (base_width_given is None or network_width(mode, base_width_given) == cfg.n_channels):
        return
    asked = f"--mode {mode}" + (f" --unet-channel-num {base_width_given}" if base_width_given is not None else "")
    rule = " (rgbd networks have 2N channels for --unet-channel-num N)" if is_two_branch(mode) or is_two_branch(cfg.mode) else ""
    raise TransFusionError(
        f"{path} holds a {cfg.mode} network with {cfg.n_channels} channels but {asked} was given{rule}; "
        f"run with --mode {cfg.mode} --unet-channel-num {base_width(cfg.mode, cfg.n_channels)}")


def check_network(cfg: UNetConfig, requested: Requested, path: Path | str) -> None:
    """Refuse a network asked for explicitly that is not the checkpoint's (mode, width, --unet-*)."""
    mode = requested.mode or (cfg.mode if requested.base_width is not None else None)
    check_arch_matches(cfg, mode, requested.base_width, path)
    for dest, name in _UNET_FLAGS.items():
        if name in requested.unet and requested.unet[name] != getattr(cfg, name):
            flag = "--" + dest.replace("_", "-")
            have = getattr(cfg, name)
            shown = " ".join(str(v) for v in have) if isinstance(have, tuple) else str(have)
            raise TransFusionError(f"{path} holds a network with {flag} {shown}, not the one asked for; the weights "
                                   f"decide the architecture: leave {flag} out")


def checked_process(num_steps: int, mode: str, eval_steps: int | None, meta_path: Path | str) -> TransparencyProcess:
    """The run's transparency process, refusing an --eval-steps its T cannot take."""
    process = TransparencyProcess(num_steps, mode)
    try:
        process.schedule(eval_steps)
    except ValueError as exc:
        raise TransFusionError(f"--eval-steps {eval_steps}: the run was trained with T = {num_steps} diffusion "
                               f"steps ({meta_path}), so {exc}") from None
    return process


def _image_size(meta: dict[str, Any], meta_path: Path, category: str, requested: Requested) -> tuple[int, list[str]]:
    trained = meta.get("img_size")
    if requested.image_size is not None:
        notes = []
        if trained is not None and int(trained) != requested.image_size:
            notes.append(f"[{category}] note: trained at {int(trained)} px ({meta_path}); scoring at the "
                         f"--img-size {requested.image_size} given")
        return requested.image_size, notes
    return (int(trained) if trained is not None else requested.fallback_image_size), []


def _num_steps(meta: dict[str, Any], meta_path: Path, requested: Requested) -> int:
    trained = meta.get("diffusion_num_steps")
    if trained is None:
        return requested.num_steps or requested.fallback_num_steps
    if requested.num_steps is not None and requested.num_steps != int(trained):
        raise TransFusionError(f"--diffusion-num-steps {requested.num_steps}: the run was trained with T = "
                               f"{int(trained)} ({meta_path}) and its weights only fit that process; leave the "
                               f"flag out (every command takes the run's T)")
    return int(trained)


def training_depth_range(args: argparse.Namespace, categories: str | list[str]) -> DepthSource | None:
    """With -d: the depth range of a run that records none (released weights), taken from the
    training set as training takes it (gmin, gmax of the raw full-size tiffs, so the working size
    does not matter; a multi-class network's over the union of its ``categories``: the smallest
    gmin and the largest gmax, docs/method.md §10); None without -d."""
    if not args.data_path:
        return None
    from data.datasets import TrainDataset  # reads the dataset: only where a depth range is missing

    names = [categories] if isinstance(categories, str) else list(categories)

    def union(mode: str) -> tuple[float, float]:
        ranges = [TrainDataset(args.dataset, args.data_path, c, mode, args.img_size).depth_norm for c in names]
        return min(r[0] for r in ranges), max(r[1] for r in ranges)  # type: ignore[index]

    return union


def _depth_norm(meta: dict[str, Any], meta_path: Path, mode: str,
                depth_from_training: DepthSource | None) -> tuple[float, float] | None:
    """The meta's depth range; else (released weights) the one recomputed from the training set."""
    if meta.get("depth_norm"):
        lo, hi = meta["depth_norm"]
        return float(lo), float(hi)
    if not has_depth(mode):
        return None
    if depth_from_training is None:
        raise TransFusionError(f"{meta_path} has no depth range (gmin, gmax of the training set); pass -d DATA with "
                               f"the dataset the run was trained on, or run -c test on the run once, which stores it")
    return depth_from_training(mode)


def resolve_settings(paths: RunPaths, category: str, meta: dict[str, Any], config: UNetConfig, requested: Requested,
                     depth_from_training: DepthSource | None = None) -> RunSettings:
    """The rule of the module docstring for one category's ``meta`` and checkpoint ``config``.

    ``depth_from_training``: where the meta has no depth range (released weights), a way to take
    it from the training set, as -c test does (None: refuse with a line saying what to pass)."""
    meta_path = paths.meta(category)
    check_network(config, requested, paths.weights(category))
    size, notes = _image_size(meta, meta_path, category, requested)
    steps = _num_steps(meta, meta_path, requested)
    process = checked_process(steps, config.mode, requested.eval_steps, meta_path)
    depth_norm = _depth_norm(meta, meta_path, config.mode, depth_from_training)
    return RunSettings(category, meta, meta_path, config, size, steps, depth_norm, process, tuple(notes))


def run_settings(paths: RunPaths, category: str, config: UNetConfig, requested: Requested,
                 depth_from_training: DepthSource | None = None) -> RunSettings:
    """`resolve_settings` for the category's meta as the run folder holds it."""
    return resolve_settings(paths, category, read_meta(paths, category), config, requested, depth_from_training)


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
