"""Who may change a run's categories: -c train starts only on a category without trained weights
(unless --resume continues them or --overwrite moves them aside), and -c test holds a category's
results lock while it writes them (the lock files: utils/run/locks.py; where: utils/run/paths.py)."""
from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ContextManager

from utils.core.errors import TransFusionError
from utils.run.locks import held
from utils.run.meta import read_meta
from utils.run.paths import RunPaths


def trained_here(paths: RunPaths, category: str) -> bool:
    """Whether this run trained ``category`` itself: training states, or a meta written by training
    (released weights have no meta; -c test only adds its threshold to one)."""
    if paths.train_states(category):
        return True
    try:
        return "unet" in read_meta(paths, category)
    except TransFusionError:
        return False


def start_refusal(paths: RunPaths, categories: list[str], resume: bool, overwrite: bool) -> str | None:
    """Why a -c train must not start on these categories' existing files, or None: trained
    weights (or training states) are only continued (``resume``) or replaced (``overwrite``),
    and --resume needs a training state. Every category is looked at before anything starts,
    so one message names them all."""
    trained = [c for c in categories if paths.has_weights(c) or paths.train_states(c)]
    if resume:
        stateless = [c for c in trained if not paths.train_states(c)]
        if not stateless:
            return None
        return (f"--resume: {', '.join(stateless)} in {paths.models} {'has' if len(stateless) == 1 else 'have'} "
                f"weights but no training state to continue from (released weights, or the states were removed); "
                f"start again with --overwrite (the weights move to {paths.root}/replaced-<time>/) or test them "
                f"with -c test")
    if not trained or overwrite:
        return None
    return (f"run {paths.root} already has trained weights for {', '.join(trained)} "
            f"({paths.weights(trained[0])}{', ...' if len(trained) > 1 else ''}); add --resume to continue "
            f"training {'it' if len(trained) == 1 else 'them'}, or --overwrite to start again (the old files move "
            f"to {paths.root}/replaced-<time>/, nothing is deleted)")


# How long a -c test waits for another one writing the same category's results (seconds):
# writing takes seconds, panels with --visualize minutes at most.
RESULTS_WAIT_S = 900.0


def results_lock(paths: RunPaths, category: str, purpose: str, take: bool = True) -> ContextManager[Any]:
    """Held while writing ``category``'s results, so two -c test never write them at once (the
    second waits for the first); a training's lock is another file, so tests run beside it.
    ``take=False`` (the ranks that do not write) holds nothing."""
    if not take:
        return nullcontext()
    return held(paths.results_lock(category), purpose, wait_s=RESULTS_WAIT_S)


def replaced_stamp(paths: RunPaths) -> str:
    """A new ``replaced-<stamp>`` folder name for this run: the local time, made unique."""
    base = time.strftime("%Y%m%d-%H%M%S")
    stamp, n = base, 1
    while paths.replaced(stamp).exists():
        n += 1
        stamp = f"{base}-{n}"
    return stamp


def move_aside(paths: RunPaths, category: str, stamp: str) -> list[Path]:
    """``--overwrite``: move the category's weights, meta, training states, results, TensorBoard
    logs and calibration to ``replaced-<stamp>/<category>/`` (nothing is deleted); returns what
    was moved.

    Everything moves under the category's results lock, so the results of a -c test that is
    writing them are never pulled away (this refuses instead, before anything has moved)."""
    dest = paths.replaced(stamp) / category
    files = [p for p in (paths.weights(category), paths.meta(category), *paths.train_states(category))
             if p.exists()]
    results = paths.results(category)
    folders = [(p, name) for p, name in ((paths.tensorboard(category), "tensorboard"), (results, "results"),
                                         (paths.calibration(category), "calibration")) if p.exists()]
    moved = files + [p for p, _ in folders]
    if not moved:
        return []
    # the results lock first: a running -c test makes this refuse before anything has moved
    with held(paths.results_lock(category), "-c train --overwrite") if results.exists() else nullcontext():
        dest.mkdir(parents=True, exist_ok=True)
        for p in files:
            os.replace(p, dest / p.name)
        for p, name in folders:
            os.replace(p, dest / name)
    return moved
