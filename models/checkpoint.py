"""Loading TransFusion checkpoints safely and reading their architecture (SPEC §4, §9).

The released weights are `torch.save`d state dicts of the whole TransFusion module, so
every key starts with ``model.`` (the UNet sits in ``TransFusion.model``). Everything
here works from keys and shapes alone, so it also works on tensors on the "meta"
device (no memory for the 112M rgbd parameters), and it never unpickles code:
`torch.load(..., weights_only=True)` is the only loader used.
"""
from __future__ import annotations

import errno
import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.modes import base_width as base_width_for, network_width
from utils.errors import TransFusionError

MODES = ("rgb", "d", "rgbd")
PREFIX = "model."
NOT_TRANSFUSION = "not a TransFusion checkpoint (expected keys like model.image_proj.weight)"
_HOW_TO_GET = ("download the released weights with scripts/download_weights.py "
               "or train one with -c train")
# in-channels of image_proj = image channels + condition mask + position channel
_PROJ_IN_TO_MODE = {5: "rgb", 3: "d"}
_DOWN_KEY = re.compile(r"^model\.down\.(\d+)\.(res|attn|attn_d|conv)\.")
_UP_KEY = re.compile(r"^model\.up\.(\d+)\.")
_IO_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EIO, errno.ENXIO, errno.EISDIR, errno.ENOENT})


@dataclass(frozen=True)
class ArchSpec:
    """UNet architecture as stored in a checkpoint; field names match `models.unet.UNetConfig`.

    ``ch_mults`` are cumulative (level widths n_channels·prod(mults[:l+1])); in rgbd the
    widths count both branches. ``group_conv`` only matters in rgbd (grouped in two per
    level); it defaults to all True, the released setting, so
    ``UNetConfig(**dataclasses.asdict(spec))`` rebuilds the network.
    """

    mode: str
    n_channels: int
    ch_mults: tuple[int, ...]
    attn: tuple[bool, ...]
    n_blocks: int
    group_conv: tuple[bool, ...] | None = None

    def __post_init__(self) -> None:
        # frozen: fill the default through object.__setattr__ so callers may omit it
        if self.group_conv is None:
            object.__setattr__(self, "group_conv", (True,) * len(self.ch_mults))

    @property
    def image_channels(self) -> int:
        """Channels of x_t: rgb 3, d 1, rgbd 4."""
        return {"rgb": 3, "d": 1, "rgbd": 4}[self.mode]

    @property
    def level_widths(self) -> tuple[int, ...]:
        """Output width of each level (full two-branch width in rgbd)."""
        widths, w = [], self.n_channels
        for m in self.ch_mults:
            w *= m
            widths.append(w)
        return tuple(widths)


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


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint on the CPU without running pickled code; errors are one line.

    Returns a flat dict whose keys carry the released ``model.`` prefix.
    """
    p = Path(path)
    if not p.exists():
        raise TransFusionError(f"{path}: checkpoint not found; {_HOW_TO_GET}")
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
        raise TransFusionError(f"{path}: corrupt or not a PyTorch checkpoint (unreadable pickle "
                               f"data: {reason}); re-download it with scripts/download_weights.py"
                               ) from None
    except MemoryError:
        raise
    except Exception as e:  # zip/EOF/format errors surface with many types; all mean "bad file"
        if isinstance(e, OSError) and e.errno in _IO_ERRNOS:
            # permissions, I/O errors: the file may be fine, reading it is not. (A corrupt zip
            # directory also surfaces as an OSError, EINVAL from a bad seek: that is "bad file".)
            raise TransFusionError(f"{path}: cannot be read ({e.strerror or e}); check the file's "
                                   f"permissions and the disk") from None
        raise TransFusionError(
            f"{path}: truncated, corrupt or not a PyTorch checkpoint "
            f"({type(e).__name__}: {_one_line(str(e))}); re-download it with "
            f"scripts/download_weights.py") from None
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


def infer_arch(state_dict: Mapping[str, torch.Tensor],
               path: str | os.PathLike | None = None) -> ArchSpec:
    """Read mode, width, multipliers, attention levels and blocks per level from shapes only."""
    where = f"{path}: " if path is not None else ""
    sd = state_dict

    if f"{PREFIX}image_proj_rgb.weight" in sd and f"{PREFIX}image_proj_d.weight" in sd:
        mode = "rgbd"
    elif f"{PREFIX}image_proj.weight" in sd:
        c_in = _dim(sd, f"{PREFIX}image_proj.weight", 1, where)
        if c_in not in _PROJ_IN_TO_MODE:
            raise TransFusionError(f"{where}model.image_proj.weight takes {c_in} input channels; "
                                   f"expected 5 (rgb) or 3 (d)")
        mode = _PROJ_IN_TO_MODE[c_in]
    else:
        raise TransFusionError(f"{where}{NOT_TRANSFUSION}")

    # the sinusoidal embedding has n_channels dims and feeds linear_1
    n_channels = _dim(sd, f"{PREFIX}time_emb.linear_1.weight", 1, where)
    if n_channels <= 0:
        raise TransFusionError(f"{where}model.time_emb.linear_1.weight is empty; not a TransFusion checkpoint")

    # down.<i> is either a block (res [+ attn]) or a Downsample (conv) closing a level
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
    blocks_per_level = {len(lv) for lv in levels}
    if len(blocks_per_level) != 1:
        raise TransFusionError(f"{where}levels have different numbers of blocks "
                               f"{[len(lv) for lv in levels]}; not a TransFusion UNet")
    n_blocks = blocks_per_level.pop()

    ch_mults: list[int] = []
    attn: list[bool] = []
    group_conv: list[bool] = []
    prev = n_channels
    for lv, idx in enumerate(levels):
        widths = {_dim(sd, f"{PREFIX}down.{i}.res.conv1.weight", 0, where) for i in idx}
        if len(widths) != 1:
            raise TransFusionError(f"{where}level {lv} blocks have different widths {sorted(widths)}")
        width = widths.pop()
        if width <= 0 or width % prev:
            raise TransFusionError(f"{where}level {lv} width {width} is not a multiple of the "
                                   f"previous width {prev}; not a TransFusion UNet")
        ch_mults.append(width // prev)
        prev = width
        has_attn = {f"{PREFIX}down.{i}.attn.projection.weight" in sd for i in idx}
        if len(has_attn) != 1:
            raise TransFusionError(f"{where}level {lv} has attention in some blocks only")
        attn.append(has_attn.pop())
        # grouped conv: conv1 of the first block reads in_width/2 channels per group
        first = idx[0]
        in_width = _dim(sd, f"{PREFIX}down.{first}.res.norm1.weight", 0, where)
        group_conv.append(_dim(sd, f"{PREFIX}down.{first}.res.conv1.weight", 1, where) != in_width)

    if mode != "rgbd":
        group_conv = [True] * len(levels)  # no effect outside rgbd; keep the released default
    return ArchSpec(mode=mode, n_channels=n_channels, ch_mults=tuple(ch_mults),
                    attn=tuple(attn), n_blocks=n_blocks, group_conv=tuple(group_conv))


def reference_shapes(spec: ArchSpec) -> dict[str, tuple[int, ...]]:
    """Key → shape of the released state dict layout for ``spec`` (the inverse of `infer_arch`).

    Mirrors the official `create_model` network, so with the defaults it reproduces
    `reference/official_state_dict_<mode>.tsv` exactly; useful to build test checkpoints.
    """
    n = spec.n_channels
    two = spec.mode == "rgbd"
    t_ch = 4 * n
    shapes: dict[str, tuple[int, ...]] = {f"{PREFIX}pos_emb.penc.inv_freq": (1,)}

    def add(name: str, **entries: tuple[int, ...]) -> None:
        for k, v in entries.items():
            shapes[f"{PREFIX}{name}.{k}"] = v

    def groups(level: int) -> int:
        return 2 if two and spec.group_conv[level] else 1

    def res(name: str, c_in: int, c_out: int, g: int) -> None:
        add(f"{name}.norm1", weight=(c_in,), bias=(c_in,))
        add(f"{name}.conv1", weight=(c_out, c_in // g, 3, 3), bias=(c_out,))
        add(f"{name}.norm2", weight=(c_out,), bias=(c_out,))
        add(f"{name}.conv2", weight=(c_out, c_out // g, 3, 3), bias=(c_out,))
        if c_in != c_out:
            add(f"{name}.shortcut", weight=(c_out, c_in // g, 1, 1), bias=(c_out,))
        add(f"{name}.time_emb", weight=(c_out, t_ch), bias=(c_out,))

    def attention(name: str, c: int) -> None:
        # rgbd: one single-head attention per branch, each over half the channels
        for branch in (("attn", "attn_d") if two else ("attn",)):
            ch = c // 2 if two else c
            add(f"{name}.{branch}.projection", weight=(3 * ch, ch), bias=(3 * ch,))
            add(f"{name}.{branch}.output", weight=(ch, ch), bias=(ch,))

    if two:
        add("image_proj_rgb", weight=(n // 2, 3 + 2, 3, 3), bias=(n // 2,))
        add("image_proj_d", weight=(n // 2, 1 + 2, 3, 3), bias=(n // 2,))
    else:
        add("image_proj", weight=(n, spec.image_channels + 2, 3, 3), bias=(n,))
    add("time_emb.linear_1", weight=(t_ch, n), bias=(t_ch,))
    add("time_emb.linear_2", weight=(t_ch, t_ch), bias=(t_ch,))

    levels = len(spec.ch_mults)
    i, c = 0, n
    for lv in range(levels):
        out = c * spec.ch_mults[lv]
        for _ in range(spec.n_blocks):
            res(f"down.{i}.res", c, out, groups(lv))
            if spec.attn[lv]:
                attention(f"down.{i}", out)
            c = out
            i += 1
        if lv < levels - 1:
            add(f"down.{i}.conv", weight=(c, c // groups(lv), 3, 3), bias=(c,))
            i += 1

    g_mid = groups(levels - 1)
    res("middle.res1", c, c, g_mid)
    attention("middle", c)
    res("middle.res2", c, c, g_mid)

    i = 0
    for lv in reversed(range(levels)):
        for _ in range(spec.n_blocks):
            res(f"up.{i}.res", c + c, c, groups(lv))
            if spec.attn[lv]:
                attention(f"up.{i}", c)
            i += 1
        out = c // spec.ch_mults[lv]
        res(f"up.{i}.res", c + out, out, groups(lv))
        if spec.attn[lv]:
            attention(f"up.{i}", out)
        i += 1
        c = out
        if lv > 0:
            # ConvTranspose2d weights are (in, out/groups, k, k)
            add(f"up.{i}.conv", weight=(c, c // groups(lv), 4, 4), bias=(c,))
            i += 1

    add("norm", weight=(n,), bias=(n,))
    if two:
        for head, ch in (("final", 3), ("final_mean", 3), ("final_d", 1), ("final_mean_d", 1)):
            add(head, weight=(ch, n // 2, 3, 3), bias=(ch,))
    else:
        add("final", weight=(spec.image_channels, n, 3, 3), bias=(spec.image_channels,))
        add("final_mean", weight=(spec.image_channels, n, 3, 3), bias=(spec.image_channels,))
    add("final_seg.norm", weight=(n,), bias=(n,), running_mean=(n,), running_var=(n,),
        num_batches_tracked=())
    add("final_seg.conv", weight=(1, n, 3, 3), bias=(1,))
    return shapes


def synthetic_state_dict(spec: ArchSpec, device: str | torch.device = "meta",
                         seed: int | None = None) -> dict[str, torch.Tensor]:
    """A state dict in the released layout for ``spec``: empty on "meta", small random values
    otherwise (seeded), with the buffers' real dtypes. For tests and tooling, not training."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    out: dict[str, torch.Tensor] = {}
    for key, shape in reference_shapes(spec).items():
        dtype = torch.int64 if key.endswith("num_batches_tracked") else torch.float32
        if torch.device(device).type == "meta":
            out[key] = torch.empty(shape, dtype=dtype, device="meta")
        elif dtype == torch.int64:
            out[key] = torch.zeros(shape, dtype=dtype, device=device)
        else:
            out[key] = (torch.rand(shape, generator=gen) * 0.2 - 0.1).to(device)
    out[f"{PREFIX}pos_emb.penc.inv_freq"] = torch.ones(1, device=device)
    return out


# ----------------------------------------------------------------------------- checks

def check_arch_matches(spec: ArchSpec, mode: str, base_width: int | None,
                       path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose mode or width disagrees with --mode / --unet-channel-num.

    ``base_width`` is the ``--unet-channel-num`` N the user asked for (None = not given, not
    checked); rgbd networks have 2N channels (models/modes.py), so N = 64 matches a released
    rgbd checkpoint of 128 channels.
    """
    if mode == spec.mode and (base_width is None or network_width(mode, base_width) == spec.n_channels):
        return
    asked = f"--mode {mode}" + (f" --unet-channel-num {base_width}" if base_width is not None else "")
    rule = " (rgbd networks have 2N channels for --unet-channel-num N)" if "rgbd" in (mode, spec.mode) else ""
    raise TransFusionError(
        f"{path} holds a {spec.mode} network with {spec.n_channels} channels but {asked} was "
        f"given{rule}; run with --mode {spec.mode} --unet-channel-num {base_width_for(spec.mode, spec.n_channels)}")


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
        f"{path} does not fit the network: " + "; ".join(parts) + "; check --mode and "
        "--unet-channel-num, or re-download the file with scripts/download_weights.py")


def count_parameters(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Number of values in a key→shape mapping (handy to compare with the model summary)."""
    return sum(math.prod(s) for s in shapes.values())
