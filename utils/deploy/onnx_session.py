"""An exported network (utils/deploy/onnx_export.py) run by ONNX Runtime, as the reverse loop's `Network`.

`OnnxNetwork` is a callable ``(concat(x, mask), t) -> (eps_hat, x0_hat, logits)`` like the PyTorch
module, so `TransparencyProcess.reverse` and `score_batch` run the very same loop on it: the two
backends differ in the network call only. It runs on the CPU (the onnxruntime package), in
float32, with as many intra-op threads as torch would use.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from utils.core.errors import TransFusionError
from utils.deploy.optional_deps import optional_import

INPUT_NAMES = ("x_and_mask", "t")
# A class-conditioned network (-c train_multiclass --class-embedding) takes each image's category row too:
# one graph for every category, the category an input (utils/deploy/onnx_export.py says why).
CLASS_INPUT = "class"
OUTPUT_NAMES = ("eps", "x0", "logits")


def session_options(threads: int | None = None):  # -> onnxruntime.SessionOptions
    """Intra-op threads as torch uses them (torch.get_num_threads()), one inter-op thread, and idle
    threads that sleep when OMP_WAIT_POLICY is PASSIVE (Experiment.py sets it): spinning threads
    slow everything down on a machine where anything else runs, as OpenMP's do (docs/performance.md)."""
    ort = optional_import("onnxruntime", "the onnxruntime backend")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: its warnings are about graph fusions, not the user's input
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OnnxNetwork:
    """An ONNX Runtime session of an exported TransFusion network. ``source``: the .onnx file or its
    bytes. ``image_size`` and ``channels`` are read from the file's input shape."""

    def __init__(self, source: str | os.PathLike | bytes, threads: int | None = None) -> None:
        ort = optional_import("onnxruntime", "the onnxruntime backend")
        where = "the exported network" if isinstance(source, bytes) else str(source)
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise TransFusionError(f"{where} not found: export the network first with -c export")
        try:
            self.session = ort.InferenceSession(source if isinstance(source, bytes) else str(source),
                                                sess_options=session_options(threads),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind types for a damaged file
            reason = " ".join(str(exc).split())[:200]
            raise TransFusionError(f"{where} cannot be loaded by ONNX Runtime ({type(exc).__name__}: {reason}); "
                                   f"export it again with -c export") from None
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if tuple(inputs) not in (INPUT_NAMES, INPUT_NAMES + (CLASS_INPUT,)) or tuple(outputs) != OUTPUT_NAMES:
            raise TransFusionError(f"{where} is not an exported TransFusion network (inputs {list(inputs)}, outputs "
                                   f"{outputs}; expected {list(INPUT_NAMES)} (and {CLASS_INPUT!r} when "
                                   f"class-conditioned) and {list(OUTPUT_NAMES)})")
        self.class_conditioned = CLASS_INPUT in inputs
        shape = inputs["x_and_mask"]
        self.channels = int(shape[1]) - 1  # image channels; the condition mask is the last input channel
        self.image_size = int(shape[2])
        self.threads = self.session.get_session_options().intra_op_num_threads

    def __call__(self, x_and_mask: torch.Tensor, t: torch.Tensor, classes: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The network on a CPU batch: float32 [B, C + 1, S, S], int64 [B] steps and, for a
        class-conditioned network, int64 [B] category rows."""
        feeds = {"x_and_mask": x_and_mask.detach().to("cpu", torch.float32).contiguous().numpy(),
                 "t": t.detach().to("cpu", torch.int64).contiguous().numpy()}
        if self.class_conditioned != (classes is not None):
            raise TransFusionError("a class-conditioned ONNX network takes each image's category row (and only such a "
                                   "network does); name the category")
        if classes is not None:
            feeds[CLASS_INPUT] = classes.detach().to("cpu", torch.int64).contiguous().numpy()
        eps, x0, logits = self.session.run(list(OUTPUT_NAMES), feeds)
        return torch.from_numpy(eps), torch.from_numpy(x0), torch.from_numpy(logits)
