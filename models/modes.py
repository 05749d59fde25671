"""The input modes and what they fix about the network: one home for these facts.

Imports nothing (not even torch), so the command-line parser and every layer can use it.
"""
from __future__ import annotations

MODES: tuple[str, ...] = ("rgb", "d", "rgbd")
# Channels of x_t per mode: rgb 3, depth 1, rgb + depth 4 (docs/method.md §1).
IMAGE_CHANNELS: dict[str, int] = {"rgb": 3, "d": 1, "rgbd": 4}
# --unet-channel-num's default, the paper's N.
DEFAULT_BASE_WIDTH = 64


def is_two_branch(mode: str) -> bool:
    """rgb and depth in one input (rgbd): the network has an rgb branch and a depth branch."""
    return has_rgb(mode) and has_depth(mode)


def network_width(mode: str, base_width: int) -> int:
    """The UNet's n_channels for ``--unet-channel-num N``: N, but 2N in rgbd, whose two-branch
    network gives each branch N channels (the released code's rule: the default 64 gives 128)."""
    return 2 * base_width if is_two_branch(mode) else base_width


def base_width(mode: str, n_channels: int) -> int:
    """The ``--unet-channel-num`` that builds a network of ``n_channels`` (inverse of network_width)."""
    return n_channels // 2 if is_two_branch(mode) else n_channels


def rgb_channels(mode: str) -> slice:
    """The channels that blend towards an appearance (rgb, first in rgbd); empty in d."""
    return slice(0, 3) if mode in ("rgb", "rgbd") else slice(0, 0)


def depth_channels(mode: str) -> slice:
    """The additive depth channel (last in rgbd); empty in rgb."""
    return {"rgb": slice(3, 3), "d": slice(0, 1), "rgbd": slice(3, 4)}[mode]


def has_rgb(mode: str) -> bool:
    return mode in ("rgb", "rgbd")


def has_depth(mode: str) -> bool:
    return mode in ("d", "rgbd")
