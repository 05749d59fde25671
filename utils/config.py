"""What the parsed command line means as objects: the network's architecture, how it runs and
how it scores. Built once from the flags and passed down, so lower layers never see ``args``."""
from __future__ import annotations

import argparse

from models.modes import DEFAULT_BASE_WIDTH, network_width
from models.runtime import RuntimeOptions
from models.scoring import ScoringOptions
from models.unet import UNetConfig
from utils.errors import TransFusionError

# The paper's --img-size and --diffusion-num-steps: what a run without a meta file (released
# weights) is taken to use, by the command line and the Python API alike.
DEFAULT_IMG_SIZE = 256
DEFAULT_DIFFUSION_STEPS = 20


def unet_config(args: argparse.Namespace) -> UNetConfig:
    """The UNet that ``--mode``, ``--unet-*`` describe (``--unet-channel-num N``: 2N in rgbd)."""
    base = DEFAULT_BASE_WIDTH if args.unet_channel_num is None else args.unet_channel_num
    try:
        return UNetConfig(mode=args.mode, n_channels=network_width(args.mode, base),
                          ch_mults=tuple(args.unet_ch_mults), attn=tuple(args.unet_attn),
                          group_conv=tuple(args.unet_group_conv), n_blocks=args.unet_n_blocks)
    except ValueError as exc:
        raise TransFusionError(f"--unet-* flags do not describe a valid network ({exc}); "
                               f"--unet-channel-num {base} --unet-ch-mults {' '.join(map(str, args.unet_ch_mults))}"
                               ) from None


def runtime_options(args: argparse.Namespace) -> RuntimeOptions:
    """``--amp``, ``--memory-format``, ``--compile``."""
    return RuntimeOptions(amp=args.amp, memory_format=args.memory_format, compile=args.compile)


def scoring_options(args: argparse.Namespace) -> ScoringOptions:
    """``--eval-kernel-size``, ``--eval-w``, ``--eval-steps``, ``--early-stop``."""
    return ScoringOptions(kernel_size=args.eval_kernel_size, weight=args.eval_w, eval_steps=args.eval_steps,
                          early_stop=args.early_stop)
