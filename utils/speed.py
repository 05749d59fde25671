"""Speed options. The defaults keep the numbers of the original (float noise aside); opt-ins say so.

- ``--amp {off,bf16,fp16}`` mixed precision for the network (opt-in: changes the numbers);
- ``--compile`` torch.compile (opt-in);
- ``--memory-format`` the tensor layout of the network (default: channels_last on CPU, where it
  measures ~10 % faster at 128-256 px; outputs agree within 1e-5);
- ``--malloc-reuse`` (opt-in, `tune_allocator`): glibc keeps freed tensor memory for reuse
  instead of unmapping it: ~13 % faster CPU training at 256 px batch 8, ~40 % more peak memory.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from typing import Any, ContextManager

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def autocast(device: torch.device, amp: str) -> ContextManager[Any]:
    """Autocast for the network call only; the transparency process and losses stay float32."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """fp16 needs loss scaling to keep small gradients; bf16 and float32 do not."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))


def maybe_compile(net: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """The module to call; keep the original for state_dict() (compiled keys get a prefix)."""
    return torch.compile(net) if enabled else net


def memory_format(choice: str, device: torch.device) -> torch.memory_format:
    """``auto``: channels_last on CPU (measured faster, benchmarks/README.md), contiguous elsewhere
    (not measured here on GPUs; benchmarks/gpu_check.py compares both)."""
    if choice == "auto":
        return torch.channels_last if device.type == "cpu" else torch.contiguous_format
    return torch.channels_last if choice == "channels_last" else torch.contiguous_format


def apply_memory_format(net: torch.nn.Module, choice: str, device: torch.device) -> torch.nn.Module:
    """Lay out the network's 4-d weights; activations follow (a convolution keeps its weight's layout)."""
    return net.to(memory_format=memory_format(choice, device))


_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_allocator_tuned = False


def tune_allocator() -> bool:
    """Keep freed tensor memory in the process instead of unmapping it (glibc only).

    glibc serves blocks above 32 MiB (every full-resolution activation of a 256 px batch) with a
    fresh mmap and returns them on free, so each training step page-faults its whole working set
    in again (millions of minor faults a step). With mmap off and a high trim threshold, freed
    blocks are reused: measured 13 % less time per CPU training step at 256 px, batch 8
    (52.4 vs 60.0 s), but 41 % more peak memory (10.8 vs 7.7 GiB, fragmentation), hence opt-in.
    Results do not change. Returns whether the settings took effect.
    """
    global _allocator_tuned
    if _allocator_tuned or not sys.platform.startswith("linux"):
        return _allocator_tuned
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _allocator_tuned = ok
    return ok
