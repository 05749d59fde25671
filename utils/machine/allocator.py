"""glibc allocator settings for the command line: keep freed tensor memory for reuse.

Results do not change; only where freed memory goes. Called once at start by Experiment.py.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

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
    heap is not trimmed, so the network's tensors are not faulted in again on every call.
    ``reuse_large_blocks`` (``--malloc-reuse``): no mmap at all, so the large activations of a
    256 px batch are reused too: faster training, but a higher peak (heap fragmentation), hence
    opt-in. What each costs and saves, measured: docs/performance.md.
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
