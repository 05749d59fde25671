"""Time and memory of utils.metrics.pixel_metrics against a plain np.sort.

    python benchmarks/bench_metrics.py --n 1000 --size 256

The requirement: pixel AUROC + AUPRO over N maps take at most 2x the time of
np.sort of the same number of float32 values, and copy the maps at most once.
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from utils.evaluation.metrics import pixel_metrics  # noqa: E402


def make_data(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 maps and bool masks; about half the images carry 1-3 elliptic blobs."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n):
        if rng.random() < 0.5:
            continue
        for _ in range(int(rng.integers(1, 4))):
            centre = tuple(int(c) for c in rng.integers(0, size, 2))
            axes = tuple(int(a) for a in rng.integers(2, max(3, size // 8), 2))
            cv2.ellipse(masks[i], centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    masks = masks.astype(bool)
    maps = rng.random((n, size, size), dtype=np.float32)
    # Defects score higher on average, so the metrics are neither 0.5 nor 1.
    maps[masks] += 0.5 * rng.random(int(masks.sum()), dtype=np.float32)
    return maps, masks


def peak_bytes(fn) -> int:
    """Peak memory numpy allocates while fn runs (numpy reports to tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of maps")
    parser.add_argument("--size", type=int, default=256, help="side of each square map")
    parser.add_argument("--repeat", type=int, default=1, help="timing runs; the best is kept")
    args = parser.parse_args()

    maps, masks = make_data(args.n, args.size)
    print(f"{args.n} maps of {args.size}x{args.size}: {maps.size / 1e6:.1f} M pixels, "
          f"{masks.mean() * 100:.2f} % anomalous, maps {maps.nbytes / 2**20:.0f} MiB")

    sort_times, metric_times = [], []
    for _ in range(args.repeat):
        # Interleaved, so a busy neighbour on a shared machine hits both alike.
        start = time.perf_counter()
        np.sort(maps, axis=None)
        sort_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = pixel_metrics(maps, masks)
        metric_times.append(time.perf_counter() - start)
    t_sort, t_metric = min(sort_times), min(metric_times)
    print(f"np.sort (float32):  {t_sort:8.3f} s")
    print(f"pixel_metrics:      {t_metric:8.3f} s   "
          f"(pixel AUROC {result['pixel_auroc']:.4f}, AUPRO {result['aupro']:.4f})")
    print(f"ratio:              {t_metric / t_sort:8.2f}   (requirement <= 2)")

    sort_peak = peak_bytes(lambda: np.sort(maps, axis=None))
    metric_peak = peak_bytes(lambda: pixel_metrics(maps, masks))
    print(f"peak extra memory:  np.sort {sort_peak / 2**20:.0f} MiB, pixel_metrics "
          f"{metric_peak / 2**20:.0f} MiB = {metric_peak / maps.nbytes:.2f} x the maps")


if __name__ == "__main__":
    main()
