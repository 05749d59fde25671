"""``-c train --preview-synthesis N``: the first N training samples, as training makes them.

The samples come from exactly the objects and seeds training uses (utils/training/feed.py's
`training_data`: foreground masks, the half-anomalous loader, then `make_training_input` with
the step generator seeded as training seeds it: t, the condition mask's emptying at t = T−1,
the 30 % rotation), so a user can look at what the network will be taught before spending a
GPU-day on a category. Written: ``<run>/synthesis_preview/<category>.npz`` (float32 ``x0``,
``x_t``, ``eps`` = ε = M·A unscaled, [N, C, S, S]; ``mask``, ``mask_c`` [N, 1, S, S];
``t`` [N]) and ``<category>.png`` (one row per sample: x0 | x_t | M | M_c).
"""
from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.transparency import make_training_input
from utils.core.atomic import atomic_write_bytes
from utils.reports.figures import render_synthesis_sample, save_grid
from utils.run.paths import RunPaths
from utils.training.feed import training_data

MAX_ROWS = 64  # rows drawn in the PNG; the .npz always holds all N samples


def collect_samples(args: Any, category: str, paths: RunPaths, n: int,
                    union: list[str] | None = None) -> dict[str, np.ndarray]:
    """The first ``n`` samples training would see (both halves of each batch, in order,
    continuing into the next epochs when the training set is smaller than ``n``)."""
    # a few samples: not worth decoding every image
    data = training_data(args, category, paths, keep_decoded=False, categories=union)
    gen = torch.Generator().manual_seed(args.seed)  # rank 0's step generator, as in training
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("x0", "x_t", "eps", "mask", "mask_c", "t", "anomalous")}
    got = 0
    for epoch in itertools.count():
        data.loader.batch_sampler.set_epoch(epoch)
        for keys, batch in zip(data.loader.batch_sampler, data.loader):
            ti = make_training_input(data.process, batch["image"], batch["eps"], batch["mask"],
                                     batch["mask_c"], gen)
            for name in ("x0", "x_t", "eps", "mask", "mask_c", "t"):
                parts[name].append(getattr(ti, name))
            parts["anomalous"].append(torch.tensor([k[1] for k in keys]))
            got += len(keys)
            if got >= n:
                return {k: torch.cat(v)[:n].numpy().astype(np.float32 if k not in ("t", "anomalous") else
                                                         (np.int64 if k == "t" else bool))
                        for k, v in parts.items()}
    raise AssertionError("unreachable")  # itertools.count never ends


def write_preview(args: Any, category: str, paths: RunPaths, n: int,
                  union: list[str] | None = None) -> tuple[Path, Path]:
    """Write ``<category>.npz`` and ``<category>.png``; returns their paths (``union``: the categories
    of the multi-class network ``category``)."""
    samples = collect_samples(args, category, paths, n, union)
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: v for k, v in samples.items() if k != "anomalous"})
    npz = paths.synthesis_preview(category, ".npz")
    atomic_write_bytes(npz, buf.getvalue())
    rows = [render_synthesis_sample(samples["x0"][i], samples["x_t"][i], samples["mask"][i],
                                    samples["mask_c"][i], int(samples["t"][i]), args.mode,
                                    bool(samples["anomalous"][i]))
            for i in range(min(n, MAX_ROWS))]
    png = paths.synthesis_preview(category, ".png")
    save_grid(png, rows, ncols=1)
    return npz, png


def run_preview(args: Any, categories: list[str], paths: RunPaths, union: list[str] | None = None) -> None:
    """One npz + png pair per category (or for the multi-class network of ``union``); nothing is trained."""
    for cat in categories:
        npz, png = write_preview(args, cat, paths, args.preview_synthesis, union)
        drawn = "" if args.preview_synthesis <= MAX_ROWS else f" (the first {MAX_ROWS} drawn)"
        print(f"[{cat}] synthesis preview of {args.preview_synthesis} training samples: {npz}, {png}{drawn}")
