"""Export the network to ONNX, and refuse a file whose outputs are not PyTorch's.

The file holds the network only, ``(x_and_mask [B, C + 1, S, S] float32, t [B] int64) -> (eps,
x0, logits)``, with a dynamic batch and the run's image size S; the reverse loop stays in
models/transparency.py, which runs on it through utils/deploy/onnx_session.py. The exporter is the one
torch uses by default (torch.export + onnxscript). Before anything is written, the file runs in
ONNX Runtime on a probe batch of another size than the export's and its outputs are compared
with the PyTorch network's: a file that disagrees by more than EXPORT_TOLERANCE is not written.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import warnings
from dataclasses import dataclass

import torch

from models.conditioning import ClassConditionedUNet
from models.unet import TransFusionUNet
from utils.core.atomic import atomic_write_bytes
from utils.core.errors import TransFusionError
from utils.deploy.onnx_session import CLASS_INPUT, INPUT_NAMES, OUTPUT_NAMES, OnnxNetwork
from utils.deploy.optional_deps import optional_import

# What is exported: the paper's network, or one class-conditioned network for every category whose
# graph takes each image's category row as an input (one file to ship for a whole line of parts,
# rather than a copy of the weights per category).
Exportable = TransFusionUNet | ClassConditionedUNet

OPSET = 18               # the lowest the exporter writes; ONNX Runtime and OpenVINO read it
EXPORT_TOLERANCE = 1e-4  # largest |ONNX Runtime − PyTorch| accepted on the probe batch
_EXPORT_BATCH, _PROBE_BATCH = 2, 3  # the probe's batch differs from the traced one: the batch is dynamic


def _attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """aten.scaled_dot_product_attention on the network's 3-d [B, L, E] inputs as ONNX operators
    (onnxscript's own translation takes 4-d inputs only): softmax(q·√s @ (k·√s)ᵀ) @ v with
    s = 1/√E, scaling q and k as torch's math kernel does. The network never masks or drops."""
    from onnxscript import opset18 as op

    if attn_mask is not None or dropout_p or is_causal or enable_gqa:
        raise NotImplementedError("the TransFusion network's attention has no mask, dropout or grouped heads")
    s = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    root = op.Constant(value_float=math.sqrt(s))
    weights = op.Softmax(op.MatMul(op.Mul(query, root), op.Transpose(op.Mul(key, root), perm=[0, 2, 1])), axis=-1)
    return op.MatMul(weights, value)


@dataclass(frozen=True)
class ExportCheck:
    """How far the exported network's outputs are from PyTorch's on the probe batch."""

    max_abs_diff: dict[str, float]  # per output
    probe_batch: int
    tolerance: float = EXPORT_TOLERANCE

    def as_dict(self) -> dict[str, object]:
        return {"max_abs_diff": self.max_abs_diff, "probe_batch": self.probe_batch, "tolerance": self.tolerance}


def _example(net: Exportable, batch: int, size: int, num_steps: int, seed: int) -> tuple[torch.Tensor, ...]:
    """A batch like the reverse loop's: an image in [-1, 1], a 0/1 condition mask, steps in 1..T−2
    (and, for a class-conditioned network, category rows)."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, net.cfg.image_channels, size, size, generator=g) * 2 - 1
    mask = (torch.rand(batch, 1, size, size, generator=g) > 0.5).float()
    t = torch.randint(1, max(num_steps - 1, 2), (batch,), generator=g)
    if isinstance(net, ClassConditionedUNet):
        return torch.cat((image, mask), dim=1), t, torch.randint(0, len(net.categories), (batch,), generator=g)
    return torch.cat((image, mask), dim=1), t


def cpu_copy(net: Exportable) -> Exportable:
    """What is exported: a float32 copy of ``net`` on the CPU, contiguous, in eval mode (the
    caller's network stays where and as it is)."""
    return copy.deepcopy(net).to("cpu", torch.float32, memory_format=torch.contiguous_format).eval()


def onnx_bytes(model: Exportable, size: int, num_steps: int) -> bytes:
    """The serialised ONNX model of ``model`` (a `cpu_copy`) at ``size`` px."""
    optional_import("onnx", "ONNX export")
    optional_import("onnxscript", "ONNX export")
    batch = torch.export.Dim("batch", min=1)
    example = _example(model, _EXPORT_BATCH, size, num_steps, seed=0)
    names = list(INPUT_NAMES) + ([CLASS_INPUT] if len(example) == 3 else [])
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's notes on naming the shared batch axis, deprecations
        program = torch.onnx.export(
            model, example, dynamo=True, opset_version=OPSET,
            input_names=names, output_names=list(OUTPUT_NAMES),
            dynamic_shapes=tuple({0: batch} for _ in example), verbose=False,
            custom_translation_table={torch.ops.aten.scaled_dot_product_attention.default: _attention})
    return program.model_proto.SerializeToString()


def check_export(model: Exportable, data: bytes, size: int, num_steps: int,
                 threads: int | None = None) -> ExportCheck:
    """Run the exported ``data`` and ``model`` (a `cpu_copy`) on the same probe batch; the largest
    difference per output."""
    session = OnnxNetwork(data, threads)
    probe = _example(model, _PROBE_BATCH, size, num_steps, seed=1)
    with torch.no_grad():
        expected = model(*probe)
    got = session(*probe)
    diffs = {name: float((g - e).abs().max()) for name, g, e in zip(OUTPUT_NAMES, got, expected)}
    return ExportCheck(max_abs_diff=diffs, probe_batch=_PROBE_BATCH)


def export_network(net: Exportable, path: str | os.PathLike, size: int, num_steps: int) -> ExportCheck:
    """Export ``net`` at ``size`` px to ``path`` (atomically) once ONNX Runtime reproduces its outputs
    within EXPORT_TOLERANCE on a probe batch; returns that check. ``num_steps``: the process's T."""
    model = cpu_copy(net)
    data = onnx_bytes(model, size, num_steps)
    check = check_export(model, data, size, num_steps)
    worst = max(check.max_abs_diff, key=check.max_abs_diff.get)
    if not check.max_abs_diff[worst] <= EXPORT_TOLERANCE:
        raise TransFusionError(f"the exported network's {worst} differs from PyTorch's by "
                               f"{check.max_abs_diff[worst]:.3g} (> {EXPORT_TOLERANCE:g}) on a probe batch; "
                               f"nothing was written to {path}")
    atomic_write_bytes(path, data)
    return check
