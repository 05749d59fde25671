"""norm → SiLU → conv that stores only its input for backward (less than half the activation memory).

Autograd would keep three full-size tensors per such triple: the norm's input, the norm's
output (for SiLU's backward) and the SiLU output (for the conv's backward). Here only the
input is kept; backward recomputes the normalisation and the SiLU (cheap elementwise work,
the same kernels as the forward, so bit-identical values) and then runs the conv's and the
norm's own backward kernels. The conv is never recomputed: its backward needs its input and
weight, not its output.

The up path's residual blocks start from a concatenation (previous output, skip); autograd
would keep that concatenation (for the norm and the 1×1 shortcut conv), a copy of the skip
that is kept anyway. There the input is given as its parts plus the function that assembles
them, the shortcut conv is computed in the same step, and only the parts are kept.

Gradients are bit-identical to plain autograd (`tests/models/test_recompute.py` checks `torch.equal`),
and the BatchNorm running statistics are updated once, in the forward. Measured: the default
network keeps about a third of the activation bytes; a 256 px batch-8 CPU training step peaks
at about half the memory of the original's and is no slower (docs/performance.md).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

NormFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Assemble = Callable[..., torch.Tensor]


def _norm_for_recompute(norm: nn.Module) -> NormFn:
    """The normalisation as a function of (x, weight, bias), without running-stat updates."""
    if isinstance(norm, nn.GroupNorm):
        return lambda x, w, b: F.group_norm(x, norm.num_groups, w, b, norm.eps)
    if isinstance(norm, nn.BatchNorm2d):
        # Training mode normalises with the batch statistics; recomputing them from the same
        # input gives the same values. The running statistics were updated in the forward.
        return lambda x, w, b: F.batch_norm(x, None, None, w, b, True, 0.0, norm.eps)
    raise TypeError(f"norm_act_conv supports GroupNorm and BatchNorm2d, not {type(norm).__name__}")


@dataclass(frozen=True)
class _Spec:
    n_parts: int
    assemble: Assemble | None  # None: the single part is the input
    norm: nn.Module
    conv: nn.Conv2d
    shortcut: nn.Conv2d | None


def _conv_backward(conv: nn.Conv2d, grad_out: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor,
                   need_weight: bool, need_bias: bool):
    return torch.ops.aten.convolution_backward(
        grad_out.to(inp.dtype), inp, weight, [conv.out_channels] if conv.bias is not None else None,
        list(conv.stride), list(conv.padding), list(conv.dilation), False, [0, 0], conv.groups,
        [True, need_weight, need_bias])


class _NormActConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, *tensors):  # type: ignore[override]
        # tensors: *parts, norm weight, norm bias, conv weight, conv bias[, shortcut weight, bias]
        device_type = tensors[0].device.type
        ctx.autocast = ((torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
                        if torch.amp.is_autocast_available(device_type) else None)
        ctx.spec, ctx.norm_fn = spec, _norm_for_recompute(spec.norm)
        parts = tensors[:spec.n_parts]
        x = spec.assemble(*parts) if spec.assemble else parts[0]
        out = spec.conv(F.silu(spec.norm(x)))  # the module call: BatchNorm updates its running stats
        ctx.dtypes = (out.dtype,)
        ctx.save_for_backward(*tensors)
        if spec.shortcut is None:
            return out
        short = spec.shortcut(x)
        ctx.dtypes += (short.dtype,)
        return out, short

    @staticmethod
    def backward(ctx, grad_out, grad_short=None):  # type: ignore[override]
        spec = ctx.spec
        saved = ctx.saved_tensors
        need = ctx.needs_input_grad[1:]
        leaves = [t.detach().requires_grad_(n) if t is not None else None for t, n in zip(saved, need)]
        n = spec.n_parts
        parts, (norm_w, norm_b, conv_w, conv_b) = leaves[:n], leaves[n:n + 4]
        # recompute under the autocast state of the forward, so the values are the same
        amp = (torch.autocast(parts[0].device.type, dtype=ctx.autocast[1], enabled=ctx.autocast[0])
               if ctx.autocast else contextlib.nullcontext())
        with torch.enable_grad():
            with amp:
                x = spec.assemble(*parts) if spec.assemble else parts[0]
                y = F.silu(ctx.norm_fn(x, norm_w, norm_b))
            # what each conv saw: under autocast its input and weight were cast to the compute dtype
            conv_in, weight = y.to(ctx.dtypes[0]), conv_w.to(ctx.dtypes[0])
        g_in, g_w, g_b = _conv_backward(spec.conv, grad_out, conv_in, weight, need[n + 2],
                                        conv_b is not None and need[n + 3])
        outputs, grads = [conv_in], [g_in]
        if g_w is not None:
            outputs.append(weight)
            grads.append(g_w)
        bias_grads = [g_b.to(conv_b.dtype) if g_b is not None else None]
        if spec.shortcut is not None:
            short_w, short_b = leaves[n + 4], leaves[n + 5]
            with torch.enable_grad():
                short_in, short_weight = x.to(ctx.dtypes[1]), short_w.to(ctx.dtypes[1])
            gs_in, gs_w, gs_b = _conv_backward(spec.shortcut, grad_short, short_in, short_weight,
                                               need[n + 4], short_b is not None and need[n + 5])
            # x's gradient is then the sum of the norm path's and the shortcut's, as in autograd
            outputs.append(short_in)
            grads.append(gs_in)
            if gs_w is not None:
                outputs.append(short_weight)
                grads.append(gs_w)
            bias_grads.append(gs_b.to(short_b.dtype) if gs_b is not None else None)
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        got = iter(torch.autograd.grad(outputs, wanted, grads, allow_unused=True) if wanted else ())
        result = [next(got) if t is not None and t.requires_grad else None for t in leaves]
        result[n + 3] = bias_grads[0]  # biases: straight from the conv kernels
        if spec.shortcut is not None:
            result[n + 5] = bias_grads[1]
        return (None, *result)


# Inputs smaller than this take plain autograd: recomputing them saves little memory, and the
# custom Function's fixed cost per call (its own small autograd graph in backward) then shows
# on small networks (docs/performance.md), while at 256 px, batch 8, every input of the default
# network is above it (the memory saving stays whole). Outputs and gradients are bit-identical
# either way.
RECOMPUTE_MIN_BYTES = 16 * 2**20


def _use_recompute(recompute: bool, tensors: tuple[torch.Tensor | None, ...], n_inputs: int = 1) -> bool:
    """Whether the memory-lean path runs: asked for, autograd recording, and inputs (the first
    ``n_inputs`` tensors) of at least RECOMPUTE_MIN_BYTES together."""
    if not (recompute and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)):
        return False
    return sum(t.numel() * t.element_size() for t in tensors[:n_inputs]) >= RECOMPUTE_MIN_BYTES


def norm_act_conv(x: torch.Tensor, norm: nn.Module, conv: nn.Conv2d, recompute: bool) -> torch.Tensor:
    """``conv(silu(norm(x)))``; with ``recompute`` and autograd recording, the memory-lean version."""
    tensors = (x, norm.weight, norm.bias, conv.weight, conv.bias)
    if _use_recompute(recompute, tensors):
        return _NormActConv.apply(_Spec(1, None, norm, conv, None), *tensors)
    return conv(F.silu(norm(x)))


def norm_act_conv_with_shortcut(parts: tuple[torch.Tensor, ...], assemble: Assemble, norm: nn.Module,
                                conv: nn.Conv2d, shortcut: nn.Conv2d, recompute: bool
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(conv(silu(norm(x))), shortcut(x))`` for ``x = assemble(*parts)``; with ``recompute``
    and autograd recording, ``x`` itself is not kept, only its parts."""
    tensors = (*parts, norm.weight, norm.bias, conv.weight, conv.bias, shortcut.weight, shortcut.bias)
    if _use_recompute(recompute, tensors, len(parts)):
        return _NormActConv.apply(_Spec(len(parts), assemble, norm, conv, shortcut), *tensors)
    x = assemble(*parts)
    return conv(F.silu(norm(x))), shortcut(x)
