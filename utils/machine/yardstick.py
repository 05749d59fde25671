"""How fast this machine multiplies: the yardstick every time in this project is quoted against.

Machines this project runs on differ severalfold in speed, so a time means little without the
4096² float32 matrix-product rate measured in the same run (docs/performance.md).
"""
from __future__ import annotations

import time


def matmul_gflops(n: int = 4096, repeats: int = 5) -> list[float]:
    """GFLOP/s of ``repeats`` n×n float32 matrix products (after one warm-up), on the CPU."""
    import torch

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    a @ b
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        rates.append(2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return rates
