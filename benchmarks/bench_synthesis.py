"""Throughput of synthetic-anomaly training samples (one process, no DataLoader workers).

    python benchmarks/bench_synthesis.py --n 40

Measures SyntheticAnomalyDataset items with make_anomaly=True at 256 px for rgb and rgbd, on
synthetic base images, with the built-in texture bank (so it runs without any dataset).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from data.synthesis import AnomalySynthesizer  # noqa: E402
from data.textures import TextureSource  # noqa: E402
from data.training_data import HalfBatchSampler, SyntheticAnomalyDataset  # noqa: E402


class _SyntheticBase(torch.utils.data.Dataset):
    """Random smooth images (and depth with some missing points) standing in for a real dataset."""

    def __init__(self, n: int, channels: int, size: int) -> None:
        # Made up front so that the timing measures synthesis, not the stand-in images.
        self.items = [self._make(i, channels, size) for i in range(n)]

    @staticmethod
    def _make(i: int, c: int, s: int) -> dict:
        rng = np.random.default_rng(i)
        yy, xx = np.mgrid[0:s, 0:s] / s
        img = np.stack([np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(4 * yy) for _ in range(c)]).astype(np.float32)
        if c in (1, 4):
            img[-1] = -0.5 - 0.3 * img[-1] ** 2
            img[-1, : s // 8] = 0.0  # missing depth
        fg = np.zeros((1, s, s), np.float32)
        fg[:, s // 8 :, s // 8 :] = 1.0
        return {"image": torch.from_numpy(img), "fg": torch.from_numpy(fg), "index": i}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def bench(mode: str, n: int, size: int, textures: TextureSource) -> float:
    """Samples per second of anomalous items for `mode`."""
    channels = {"rgb": 3, "d": 1, "rgbd": 4}[mode]
    ds = SyntheticAnomalyDataset(_SyntheticBase(n, channels, size), AnomalySynthesizer(mode, size, textures))
    sampler = HalfBatchSampler(n, 1, seed=0)  # B == 1: every key is anomalous
    keys = [k for batch in sampler for k in batch]
    ds[keys[0]]  # warm-up: first texture decode, lazy imports
    t0 = time.perf_counter()
    for k in keys:
        ds[k]
    return len(keys) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="samples per mode")
    ap.add_argument("--size", type=int, default=256, help="image side (multiple of 32)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a DataLoader worker uses 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    textures = TextureSource.builtin()
    print(f"textures: {textures.description}")
    for mode in ("rgb", "rgbd", "d"):
        rate = bench(mode, args.n, args.size, textures)
        print(f"{mode:5s} {args.size}px: {rate:7.1f} samples/s ({1000.0 / rate:6.1f} ms/sample, n={args.n})")


if __name__ == "__main__":
    main()
