"""Everything a training run needs to continue exactly where it stopped, saved and found again.

A state holds the network, optimizer, scheduler, grad scaler, every rank's step generator, the
epochs done and the batches done of the next epoch. It is saved atomically (state first, then
the exported weights, old states pruned last), so a run killed at any moment resumes with
``--resume`` into the very sequence an uninterrupted run follows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from models.checkpoint import cpu_state_dict
from utils.core.atomic import atomic_torch_save
from utils.core.errors import TransFusionError
from utils.machine.distributed import SINGLE, Dist, barrier, gather_objects
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
        """Every rank calls this (their step generators differ); rank 0 alone writes."""
        generators = gather_objects(dist, self.generator.get_state())
        if dist.is_main:
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
            atomic_torch_save(state, paths.train_state(category, self.epoch, self.batch))
            save_weights(paths, category, self.net, meta)
            for old in paths.train_states(category)[:-max(1, keep_last)]:
                old.unlink(missing_ok=True)
        barrier(dist)

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


def latest_state(paths: RunPaths, category: str, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The newest training state that loads; a damaged newest file falls back to an older one."""
    for p in reversed(paths.train_states(category)):
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any damage: try the previous one
            log(f"warning: {p} is unreadable ({type(exc).__name__}); trying an older checkpoint")
    return None
