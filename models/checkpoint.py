"""The released checkpoint format, end to end (docs/method.md §4, §9): save, load safely, the ``model.``
prefix, and the architecture read back from the shapes into a `UNetConfig`.

The released weights are `torch.save`d state dicts of the whole TransFusion module, so
every key starts with ``model.`` (the UNet sits in ``TransFusion.model``). Reading the
architecture works from keys and shapes alone, so it also works on tensors on the "meta"
device (no memory for the 112M rgbd parameters), and nothing here unpickles code:
`torch.load(..., weights_only=True)` is the only loader used.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from models.conditioning import ClassConditionedUNet
from models.modes import is_two_branch
from models.unet import TransFusionUNet, UNetConfig
from utils.core.atomic import atomic_torch_save
from utils.core.errors import TransFusionError

PREFIX = "model."
NOT_TRANSFUSION = "not a TransFusion checkpoint (expected keys like model.image_proj.weight)"
_HOW_TO_GET = "download the released weights with scripts/download_weights.py or train one"
# in-channels of image_proj = image channels + condition mask + position channel
_PROJ_IN_TO_MODE = {5: "rgb", 3: "d"}
_DOWN_KEY = re.compile(r"^model\.down\.(\d+)\.(res|attn|attn_d|conv)\.")
_IO_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EIO, errno.ENXIO, errno.EISDIR, errno.ENOENT})


# --------------------------------------------------------------------------- loading

def _one_line(text: str, limit: int = 160) -> str:
    """First meaningful line of an exception text, without ANSI codes, shortened."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0] if lines else "no details"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _unwrap(obj: Any) -> Any:
    """Find the state dict inside the common wrappers ({'state_dict': sd}, {'model': sd})."""
    for _ in range(3):  # e.g. {'state_dict': {'model': sd}}; a bounded loop, never recursion
        if isinstance(obj, Mapping) and not any(
                isinstance(k, str) and k.startswith(PREFIX) for k in obj):
            for name in ("state_dict", "model"):
                inner = obj.get(name)
                if isinstance(inner, Mapping):
                    obj = inner
                    break
            else:
                return obj
        else:
            return obj
    return obj


def normalize_state_dict(obj: Any, path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Turn whatever `torch.load` returned into a flat ``model.``-prefixed str→Tensor dict.

    Accepts a plain state dict, one wrapped in 'state_dict'/'model', keys with the
    'module.' prefix DataParallel/DDP adds, and the bare UNet's keys (no 'model.').
    """
    where = f"{path}: " if path is not None else ""
    obj = _unwrap(obj)
    if not isinstance(obj, Mapping) or not obj:
        raise TransFusionError(f"{where}{NOT_TRANSFUSION}; it holds "
                               f"{'an empty dict' if isinstance(obj, Mapping) else type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TransFusionError(f"{where}{NOT_TRANSFUSION}; entry {key!r} holds "
                                   f"{type(value).__name__}, not a tensor")
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    if not any(k.startswith(PREFIX) for k in out) and (
            "image_proj.weight" in out or "image_proj_rgb.weight" in out):
        # a state dict of the bare UNet: give it the released layout
        out = {PREFIX + k: v for k, v in out.items()}
    stray = [k for k in out if not k.startswith(PREFIX)]
    if stray or not ({f"{PREFIX}image_proj.weight", f"{PREFIX}image_proj_rgb.weight"} & out.keys()):
        example = f"; found e.g. {stray[0]!r}" if stray else ""
        raise TransFusionError(f"{where}{NOT_TRANSFUSION}{example}")
    return out


RELEASED_HINT = "re-download it with scripts/download_weights.py"


class CheckpointError(TransFusionError):
    """A checkpoint file that is missing or damaged: ``problem``, then ``hint`` on what to do.

    The hint defaults to the released weights' download script; a caller that knows the file
    is a run's own (and can be rebuilt from a training state) gives a better one, `with_hint`.
    """

    def __init__(self, problem: str, hint: str = RELEASED_HINT) -> None:
        self.problem, self.hint = problem, hint
        super().__init__(f"{problem}; {hint}")

    def with_hint(self, hint: str) -> "CheckpointError":
        return CheckpointError(self.problem, hint)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint on the CPU without running pickled code; errors are one line.

    Returns a flat dict whose keys carry the released ``model.`` prefix.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{path}: checkpoint not found", _HOW_TO_GET)
    if not p.is_file():
        raise TransFusionError(f"{path}: is not a file; point to a <category>_model.pkl checkpoint")
    try:
        with warnings.catch_warnings():
            # torch warns (two stderr lines) about any pickle protocol but 2, even in garbage
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if re.search(r"\bGLOBAL\b|Unsupported global|allowed global", text):
            # the safe unpickler met a class/function it does not allow: never fall back to
            # the full unpickler, which would run whatever the file asks for
            raise TransFusionError(
                f"{path}: refused to load, it holds pickled Python objects other than tensors "
                f"(loading it could run code); use a plain state_dict checkpoint, e.g. "
                f"re-download with scripts/download_weights.py") from None
        inner = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = _one_line(inner.group(1) if inner else text)
        raise CheckpointError(f"{path}: corrupt or not a PyTorch checkpoint (unreadable pickle data: {reason})"
                              ) from None
    except MemoryError:
        raise
    except Exception as e:  # zip/EOF/format errors surface with many types; all mean "bad file"
        if isinstance(e, OSError) and e.errno in _IO_ERRNOS:
            # permissions, I/O errors: the file may be fine, reading it is not. (A corrupt zip
            # directory also surfaces as an OSError, EINVAL from a bad seek: that is "bad file".)
            raise TransFusionError(f"{path}: cannot be read ({e.strerror or e}); check the file's "
                                   f"permissions and the disk") from None
        raise CheckpointError(f"{path}: truncated, corrupt or not a PyTorch checkpoint "
                              f"({type(e).__name__}: {_one_line(str(e))})") from None
    return normalize_state_dict(obj, path)


# --------------------------------------------------------------------- architecture

def _dim(sd: Mapping[str, torch.Tensor], key: str, axis: int, where: str) -> int:
    """Size of one axis of a tensor in the state dict, or a one-line 'not TransFusion' error."""
    if key not in sd:
        raise TransFusionError(f"{where}{NOT_TRANSFUSION}; {key} is missing")
    shape = tuple(sd[key].shape)
    if axis >= len(shape):
        raise TransFusionError(f"{where}{key} has shape {list(shape)}; not a TransFusion checkpoint")
    return shape[axis]


def _mode_of(sd: Mapping[str, torch.Tensor], where: str) -> str:
    if f"{PREFIX}image_proj_rgb.weight" in sd and f"{PREFIX}image_proj_d.weight" in sd:
        return "rgbd"
    if f"{PREFIX}image_proj.weight" not in sd:
        raise TransFusionError(f"{where}{NOT_TRANSFUSION}")
    c_in = _dim(sd, f"{PREFIX}image_proj.weight", 1, where)
    if c_in not in _PROJ_IN_TO_MODE:
        raise TransFusionError(f"{where}model.image_proj.weight takes {c_in} input channels; "
                               f"expected 5 (rgb) or 3 (d)")
    return _PROJ_IN_TO_MODE[c_in]


def _down_levels(sd: Mapping[str, torch.Tensor], where: str) -> list[list[int]]:
    """Indices of model.down.<i> residual blocks, grouped by level (a Downsample closes a level)."""
    kinds: dict[int, set[str]] = {}
    for key in sd:
        m = _DOWN_KEY.match(key)
        if m:
            kinds.setdefault(int(m.group(1)), set()).add(m.group(2))
    if not kinds or sorted(kinds) != list(range(len(kinds))):
        raise TransFusionError(f"{where}{NOT_TRANSFUSION}; model.down.* is missing or has gaps")
    levels: list[list[int]] = [[]]
    for i in range(len(kinds)):
        if "conv" in kinds[i]:
            if not levels[-1]:
                raise TransFusionError(f"{where}model.down.{i} downsamples an empty level")
            levels.append([])
        elif "res" in kinds[i]:
            levels[-1].append(i)
        else:
            raise TransFusionError(f"{where}model.down.{i} has attention but no residual block")
    if not levels[-1]:
        raise TransFusionError(f"{where}model.down ends with a downsample, not a residual block")
    if len({len(lv) for lv in levels}) != 1:
        raise TransFusionError(f"{where}levels have different numbers of blocks "
                               f"{[len(lv) for lv in levels]}; not a TransFusion UNet")
    return levels


def _level(sd: Mapping[str, torch.Tensor], idx: list[int], lv: int, prev: int, where: str
           ) -> tuple[int, bool, bool]:
    """(width, attention, grouped conv) of one level from its blocks' shapes."""
    widths = {_dim(sd, f"{PREFIX}down.{i}.res.conv1.weight", 0, where) for i in idx}
    if len(widths) != 1:
        raise TransFusionError(f"{where}level {lv} blocks have different widths {sorted(widths)}")
    width = widths.pop()
    if width <= 0 or width % prev:
        raise TransFusionError(f"{where}level {lv} width {width} is not a multiple of the "
                               f"previous width {prev}; not a TransFusion UNet")
    has_attn = {f"{PREFIX}down.{i}.attn.projection.weight" in sd for i in idx}
    if len(has_attn) != 1:
        raise TransFusionError(f"{where}level {lv} has attention in some blocks only")
    # grouped conv: conv1 of the first block reads in_width/2 channels per group
    in_width = _dim(sd, f"{PREFIX}down.{idx[0]}.res.norm1.weight", 0, where)
    grouped = _dim(sd, f"{PREFIX}down.{idx[0]}.res.conv1.weight", 1, where) != in_width
    return width, has_attn.pop(), grouped


def config_from_state_dict(state_dict: Mapping[str, torch.Tensor],
                           path: str | os.PathLike | None = None) -> UNetConfig:
    """Read mode, width, multipliers, attention levels and blocks per level from shapes only."""
    where = f"{path}: " if path is not None else ""
    mode = _mode_of(state_dict, where)
    # the sinusoidal embedding has n_channels dims and feeds linear_1
    n_channels = _dim(state_dict, f"{PREFIX}time_emb.linear_1.weight", 1, where)
    if n_channels <= 0:
        raise TransFusionError(f"{where}model.time_emb.linear_1.weight is empty; not a TransFusion checkpoint")
    levels = _down_levels(state_dict, where)
    ch_mults, attn, group_conv = [], [], []
    prev = n_channels
    for lv, idx in enumerate(levels):
        width, has_attn, grouped = _level(state_dict, idx, lv, prev, where)
        ch_mults.append(width // prev)
        attn.append(has_attn)
        group_conv.append(grouped)
        prev = width
    if not is_two_branch(mode):
        group_conv = [True] * len(levels)  # no effect outside rgbd; keep the released default
    try:
        return UNetConfig(mode=mode, n_channels=n_channels, ch_mults=tuple(ch_mults), attn=tuple(attn),
                          group_conv=tuple(group_conv), n_blocks=len(levels[0]))
    except ValueError as exc:
        raise TransFusionError(f"{where}not a TransFusion UNet ({exc})") from None


# ----------------------------------------------------------------------------- checks

def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]"


def validate_against_model(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module,
                           path: str | os.PathLike) -> None:
    """One-line error for missing/unexpected keys or shape mismatches before `load_state_dict`.

    ``model`` may be the TransFusion wrapper (keys 'model.…') or the bare UNet; the file's
    'model.' prefix is dropped for the comparison in the latter case.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    if expected and not any(k.startswith(PREFIX) for k in expected):
        got = {(k[len(PREFIX):] if k.startswith(PREFIX) else k): s for k, s in got.items()}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    mismatched = [k for k in expected if k in got and got[k] != expected[k]]
    if not (missing or unexpected or mismatched):
        return

    def summary(label: str, keys: list[str], fmt: Any = str) -> str:
        shown = ", ".join(fmt(k) for k in keys[:3])
        more = f", +{len(keys) - 3} more" if len(keys) > 3 else ""
        return f"{len(keys)} {label} ({shown}{more})"

    parts = []
    if missing:
        parts.append(summary("missing keys", missing))
    if unexpected:
        parts.append(summary("unexpected keys", unexpected))
    if mismatched:
        parts.append(summary("keys with a different shape", mismatched,
                             lambda k: f"{k} file {_fmt_shape(got[k])} vs network "
                                       f"{_fmt_shape(expected[k])}"))
    raise TransFusionError(
        f"{path} does not fit the network: " + "; ".join(parts) + "; it holds another "
        "architecture, or it is damaged (re-download released weights with scripts/download_weights.py)")


# ---------------------------------------------------------------------- saving and building

def cpu_state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the network's state, contiguous: a saved file must not depend on the
    memory layout the network ran with."""
    return {k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
            for k, v in net.state_dict().items()}


def released_state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The network's weights in the released layout (``model.`` prefix), on the CPU."""
    return {PREFIX + k: v for k, v in cpu_state_dict(net).items()}


def save_released(net: torch.nn.Module, path: str | os.PathLike) -> None:
    """Write the weights as a released checkpoint (atomically)."""
    atomic_torch_save(released_state_dict(net), path)


CLASS_EMBEDDING_FORMAT = "transfusion-class-embedding"


def save_class_embedding(net: ClassConditionedUNet, path: str | os.PathLike) -> None:
    """The rows of a class-conditioned network and the categories they belong to, beside its
    released-format weights (which stay the paper's network, loadable by the original's code)."""
    atomic_torch_save({"format": CLASS_EMBEDDING_FORMAT, "version": 1, "categories": list(net.categories),
                       "weight": net.class_embedding.weight.detach().cpu().clone()}, path)


def with_class_embedding(net: TransFusionUNet, path: str | os.PathLike) -> ClassConditionedUNet:
    """``net`` conditioned by the side file at ``path`` (never executing pickled code); a one-line
    error for a file that is not one this project wrote for this network."""
    where = f"{path}: "
    try:
        side = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any damage is the same answer
        raise TransFusionError(f"{where}not a readable class-embedding file ({type(exc).__name__}); restore it from "
                               f"the run that trained the network, or train it again") from None
    ok = isinstance(side, dict) and side.get("format") == CLASS_EMBEDDING_FORMAT
    cats, weight = (side.get("categories"), side.get("weight")) if ok else (None, None)
    if not (ok and isinstance(cats, list) and cats and all(isinstance(c, str) for c in cats)
            and isinstance(weight, torch.Tensor) and tuple(weight.shape) == (len(cats), 4 * net.cfg.n_channels)
            and weight.is_floating_point() and bool(torch.isfinite(weight).all())):
        raise TransFusionError(f"{where}not a class-embedding file of this network (expected {CLASS_EMBEDDING_FORMAT} "
                               f"with one finite row of {4 * net.cfg.n_channels} values per category)")
    try:
        conditioned = ClassConditionedUNet(net, cats)
    except ValueError as exc:
        raise TransFusionError(f"{where}{exc}") from None
    with torch.no_grad():
        conditioned.class_embedding.weight.copy_(weight.float())
    return conditioned


def network_from_state_dict(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> TransFusionUNet:
    """The network a released-format state dict describes, with its weights loaded (CPU)."""
    net = TransFusionUNet(config_from_state_dict(state_dict, path))
    stripped = {k.removeprefix(PREFIX): v for k, v in state_dict.items()}
    validate_against_model(stripped, net, path)
    net.load_state_dict(stripped)
    return net


def load_network_file(path: str | os.PathLike) -> TransFusionUNet:
    """Load a checkpoint safely and build its network; the architecture comes from the file."""
    return network_from_state_dict(load_state_dict_file(path), path)
