"""The optional packages of the ONNX export and the ONNX Runtime backend, imported only when asked for.

The project imports and runs without them (requirements.txt does not list them); asking for
`-c export` or the onnxruntime backend without them is a one-line error saying what to install.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from utils.core.errors import TransFusionError

EXPORT_REQUIREMENTS = "requirements-export.txt"


def optional_import(module: str, purpose: str) -> ModuleType:
    """``import module``, or a one-line TransFusionError naming ``purpose`` and what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        raise TransFusionError(
            f"{purpose} needs the {package} package, which is not installed ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())}); install the export extras: pip install -r {EXPORT_REQUIREMENTS}"
        ) from None
