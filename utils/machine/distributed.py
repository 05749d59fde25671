"""Devices and multi-process training and evaluation with PyTorch's own engine (torchrun + DDP).

``torchrun --nproc-per-node N Experiment.py -c train ...`` sets RANK/WORLD_SIZE/LOCAL_RANK;
we then join a process group (nccl on CUDA, gloo on CPU). Multi-node runs use torchrun's
rendezvous flags (``--nnodes``, ``--rdzv-endpoint``...) unchanged. A plain ``python
Experiment.py`` run is a world of one and none of this costs anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from utils.core.errors import TransFusionError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def pick_device(name: str | None) -> torch.device:
    """``--device``: CUDA when present unless told otherwise; a clear error for a missing GPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TransFusionError(f"--device {name!r} is not a device name (try cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TransFusionError(f"--device {name} asked for CUDA, but no CUDA GPU is visible; use --device cpu")
    return device


def init_distributed(device_name: str | None) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE, pick_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = (device_name or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if want_cuda:
        if not torch.cuda.is_available():
            raise TransFusionError("--device cuda under torchrun, but no CUDA GPU is visible; use --device cpu")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return Dist(rank, world, local), device


def shutdown(dist: Dist) -> None:
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch_dist.barrier()


def gather_objects(dist: Dist, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not dist.enabled:
        return [obj]
    out: list[Any] = [None] * dist.world_size
    torch_dist.all_gather_object(out, obj)
    return out


def raise_together(dist: Dist, problem: str | None) -> None:
    """Every rank raises TransFusionError when any rank has a problem (a collective, so none is left
    waiting at a barrier); each problem is said once."""
    problems = [p for p in dict.fromkeys(gather_objects(dist, problem)) if p]
    if problems:
        raise TransFusionError("; ".join(problems))


def any_rank(dist: Dist, flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a non-finite loss, Ctrl-C)."""
    if not dist.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def sync_buffers(net: torch.nn.Module, dist: Dist) -> None:
    """Copy rank 0's buffers (the BatchNorm running statistics) to every rank.

    DDP broadcasts them at the start of each forward, but the last forward's update stays
    per rank; syncing before saving or evaluating makes every rank hold the same network.
    """
    if dist.enabled:
        for buf in net.buffers():
            torch_dist.broadcast(buf, src=0)
