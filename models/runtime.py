"""How the network runs, as one small options object: precision, memory layout, compilation.

The defaults keep the original's numbers (float32, the contiguous layout, eager); each opt-in
says what it changes. `RuntimeOptions` travels from the command line to wherever the network is
called, instead of three separate flags.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager

import torch

AMP_CHOICES = ("off", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# contiguous: the original's layout, the default on every device. channels_last: opt-in; its
# other summation order moves logits by float noise, which flips mask pixels that sit near the
# threshold (benchmarks/layout_agreement.py); its speed: docs/performance.md.
MEMORY_FORMATS = ("contiguous", "channels_last")
# Who runs the network: PyTorch (every option below applies), or ONNX Runtime on the file -c export
# wrote (utils/deploy/onnx_session.py: the CPU, float32, its own layout; none of the options below applies).
BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class RuntimeOptions:
    """``amp``: mixed precision for the network call (off, bf16, fp16); ``memory_format``: the
    tensor layout of the network; ``compile``: torch.compile it."""

    amp: str = "off"
    memory_format: str = "contiguous"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of {AMP_CHOICES}, got {self.amp!r}")
        if self.memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory format must be one of {MEMORY_FORMATS}, got {self.memory_format!r}")

    def changed(self) -> dict[str, Any]:
        """The options not at their defaults, by field name (what the onnxruntime backend refuses)."""
        default = RuntimeOptions()
        fields = ("amp", "memory_format", "compile")
        return {k: getattr(self, k) for k in fields if getattr(self, k) != getattr(default, k)}

    def autocast(self, device: torch.device) -> ContextManager[Any]:
        """Autocast for the network call only; the transparency process and losses stay float32."""
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[self.amp])

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        """fp16 needs loss scaling to keep small gradients; bf16 and float32 do not."""
        return torch.amp.GradScaler(device.type, enabled=(self.amp == "fp16"))

    def place(self, net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """Move the network to ``device`` in this layout (activations follow the weights')."""
        return apply_memory_format(net.to(device), self.memory_format)

    def callable(self, net: torch.nn.Module) -> torch.nn.Module:
        """The module to call: compiled when asked. Keep ``net`` itself for state_dict()
        (compiled keys get a prefix). Compiled, the network runs without models/recompute.py's
        hand-written recomputation: the compiler chooses what to recompute itself."""
        if not self.compile:
            return net
        inner = getattr(net, "module", net)  # DistributedDataParallel wraps the network
        if hasattr(inner, "set_recompute"):
            inner.set_recompute(False)
        return torch.compile(net)


def memory_format(choice: str) -> torch.memory_format:
    if choice not in MEMORY_FORMATS:
        raise ValueError(f"memory format must be one of {MEMORY_FORMATS}, got {choice!r}")
    return torch.channels_last if choice == "channels_last" else torch.contiguous_format


def apply_memory_format(net: torch.nn.Module, choice: str) -> torch.nn.Module:
    """Lay out the network's 4-d weights; activations follow (a convolution keeps its weight's layout)."""
    return net.to(memory_format=memory_format(choice))
