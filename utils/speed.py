"""Speed options. The defaults keep the numbers of the original (float noise aside); opt-ins say so.

- ``--amp {off,bf16,fp16}`` mixed precision for the network (opt-in: changes the numbers);
- ``--compile`` torch.compile (opt-in);
- ``--memory-format`` the tensor layout of the network (default contiguous, the original's;
  channels_last is opt-in: faster on CPU, slightly different scores);
- `tune_allocator`: glibc keeps freed tensor memory up to 32 MiB blocks for reuse (default in
  the CLI, ~5 % faster 256 px evaluation); ``--malloc-reuse`` extends it to every block (opt-in:
  15 % faster 256 px CPU training, 26 % more peak memory).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from typing import Any, ContextManager

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MEMORY_FORMATS = ("contiguous", "channels_last")


def autocast(device: torch.device, amp: str) -> ContextManager[Any]:
    """Autocast for the network call only; the transparency process and losses stay float32."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """fp16 needs loss scaling to keep small gradients; bf16 and float32 do not."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))


def maybe_compile(net: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """The module to call; keep the original for state_dict() (compiled keys get a prefix).

    Compiled, the network runs without models/recompute.py's hand-written recomputation: the
    compiler sees the whole graph and chooses what to recompute itself.
    """
    if not enabled:
        return net
    inner = getattr(net, "module", net)  # DistributedDataParallel wraps the network
    if hasattr(inner, "set_recompute"):
        inner.set_recompute(False)
    return torch.compile(net)


def memory_format(choice: str) -> torch.memory_format:
    """``contiguous``, the original's layout and the default everywhere; ``channels_last`` is
    opt-in: ~10 % faster on CPU at 128-256 px, but its other summation order moves logits by
    float noise, which flips mask pixels that sit near the threshold (README)."""
    if choice not in MEMORY_FORMATS:
        raise ValueError(f"memory format must be one of {MEMORY_FORMATS}, got {choice!r}")
    return torch.channels_last if choice == "channels_last" else torch.contiguous_format


def apply_memory_format(net: torch.nn.Module, choice: str) -> torch.nn.Module:
    """Lay out the network's 4-d weights; activations follow (a convolution keeps its weight's layout)."""
    return net.to(memory_format=memory_format(choice))


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
_KEEP_FREE = 2**31 - 1  # bytes of free heap kept before trimming (mallopt takes an int)
_allocator_level = 0  # 0: glibc defaults, 1: default tuning, 2: --malloc-reuse


def tune_allocator(reuse_large_blocks: bool = False) -> bool:
    """Keep freed tensor memory in the process for reuse instead of handing it back (glibc only).

    By default glibc gives freed heap memory back to the kernel whenever 64 MiB or so lie free
    at the top, and serves blocks above a moving threshold with fresh mmaps; tensors are then
    page-faulted in again on every network call (~100-170 k minor faults per 256 px forward).
    Default (the CLI calls this on start): blocks up to 32 MiB always come from the heap and the
    heap is not trimmed: a 256 px forward takes ~5 % less time (1.95 vs 2.05 s), a 256 px
    batch-8 training step ~2 % less, for ~2 % more peak memory.
    ``reuse_large_blocks`` (``--malloc-reuse``): no mmap at all, so the 128 MiB activations of a
    256 px batch are reused too: a training step takes 15 % less time (50.9 vs 59.8 s) but peaks
    26 % higher (9.9 vs 7.9 GiB, heap fragmentation), hence opt-in.
    Results do not change. Returns whether the settings took effect.
    """
    global _allocator_level
    wanted = 2 if reuse_large_blocks else 1
    if _allocator_level >= wanted:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, _KEEP_FREE) == 1
    if ok and reuse_large_blocks:
        ok = mallopt(_M_MMAP_MAX, 0) == 1
    if ok:
        _allocator_level = wanted
    return ok

