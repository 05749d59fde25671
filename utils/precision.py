"""Opt-in mixed precision (--amp) and torch.compile (--compile); the defaults change nothing."""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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
