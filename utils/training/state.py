"""Everything a training run needs to continue exactly where it stopped, saved and found again.

A state holds the network, optimizer, scheduler, grad scaler, every rank's step generator, the
epochs done and the batches done of the next epoch. It is saved atomically (state first, then
the exported weights, old states pruned last), so a run killed at any moment resumes with
``--resume`` into the very sequence an uninterrupted run follows. A write that fails (a full
disk) leaves the previous state and weights as they were, removes a new state whose weights
could not follow it, and stops with one line naming the file, the space left and the state
to ``--resume`` from.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any, Callable

import torch

from models.checkpoint import cpu_state_dict
from utils.core.atomic import atomic_torch_save
from utils.core.errors import TransFusionError
from utils.machine.distributed import SINGLE, Dist, gather_objects, raise_together
from utils.run.network import save_weights
from utils.run.paths import RunPaths


@dataclass
class TrainState:
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # this rank's t and rotation draws
    epoch: int = 0              # epochs fully done
    batch: int = 0              # batches of epoch `epoch` already done (a mid-epoch save)

    def save(self, paths: RunPaths, category: str, keep_last: int, meta: dict[str, Any],
             dist: Dist = SINGLE) -> None:
        """Every rank calls this (their step generators differ); rank 0 alone writes. A write that
        fails (a full disk) stops every rank with one line saying what is intact."""
        generators = gather_objects(dist, self.generator.get_state())
        problem = None
        if dist.is_main:
            try:
                self._write(paths, category, keep_last, meta, generators)
            except OSError as exc:
                problem = not_saved(paths, category, exc)
        raise_together(dist, problem)  # a collective: the ranks leave together, as from a barrier

    def _write(self, paths: RunPaths, category: str, keep_last: int, meta: dict[str, Any],
               generators: list[Any]) -> None:
        state = {
            "model": cpu_state_dict(self.net),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generators": generators,  # one per rank
            "epoch": self.epoch,
            "batch": self.batch,
            "meta": meta,
        }
        path = paths.train_state(category, self.epoch, self.batch)
        new = not path.exists()
        atomic_torch_save(state, path)
        try:
            save_weights(paths, category, self.net, meta)
        except OSError:
            if new:  # the newest state must be the one the weights on disk come from
                path.unlink(missing_ok=True)
            raise
        for old in paths.train_states(category)[:-max(1, keep_last)]:
            old.unlink(missing_ok=True)

    def resume(self, paths: RunPaths, category: str, dist: Dist = SINGLE,
               log: Callable[[str], None] = print) -> bool:
        """Load the newest readable saved state into this one; False when there is none."""
        state = latest_state(paths, category, log)
        if state is None:
            return False
        gens = state["generators"]
        if len(gens) != dist.world_size:
            raise TransFusionError(
                f"the training state in {paths.models} was saved by {len(gens)} process(es); "
                f"resume it with the same number (torchrun --nproc-per-node {len(gens)})")
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(gens[dist.rank])
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        return True


def _amount(n_bytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def not_saved(paths: RunPaths, category: str, exc: OSError) -> str:
    """One line for a checkpoint that could not be written: which file and why, the space left,
    and what is intact to continue from (the newest training state, named)."""
    try:
        free = f"{_amount(shutil.disk_usage(paths.models).free)} free on {paths.models}"
    except OSError:
        free = f"the free space on {paths.models} is unknown"
    states = paths.train_states(category)
    again = f"-c train -r {paths.root.name} --category {category}"
    if states:
        intact = (f"the last checkpoint {states[-1]} and the weights {paths.weights(category)} are intact: free some "
                  f"space, then continue with {again} --resume (and the other flags as before)")
    elif paths.has_weights(category):
        intact = f"no training state was saved yet: free some space, then train again with {again} --overwrite"
    else:
        intact = f"nothing was saved yet: free some space, then run {again} again"
    return (f"[{category}] cannot write the checkpoint {exc.filename or paths.models} "
            f"({exc.strerror or exc}); {free}; {intact}")


def latest_state(paths: RunPaths, category: str, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The newest training state that loads; a damaged newest file falls back to an older one."""
    for p in reversed(paths.train_states(category)):
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any damage: try the previous one
            log(f"warning: {p} is unreadable ({type(exc).__name__}); trying an older checkpoint")
    return None
