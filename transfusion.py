"""TransFusion from your own program: the Python API of this project, under a name of its own.

    import transfusion

    det = transfusion.Detector.from_run("experiments/my_parts", "my_parts")
    result = det(["new_parts/001.png"])          # paths, RGB uint8 arrays or a [B, C, S, S] tensor
    print(result.scores, result.decisions, result.threshold)

`Detector` (utils/inference/detector.py) is what ``python Experiment.py -c predict`` runs on; `export_onnx`
(utils/deploy/export.py) is ``-c export``. Install with ``pip install -e .`` (``.[export]`` for ONNX).

The project's internals are the top-level packages ``models``, ``data`` and ``utils``: a program
that has packages of those names itself would hide them, so this module refuses, with one line
saying which, instead of failing somewhere inside.
"""
from __future__ import annotations

import importlib
from pathlib import Path

__version__ = "0.1.0"
__all__ = ["Detector", "Detection", "Threshold", "TransFusionError", "export_onnx", "__version__"]

_HOME = Path(__file__).resolve().parent


def _own_packages() -> None:
    """Import models, data and utils, and refuse any that are not this project's."""
    for name in ("utils", "models", "data"):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"transfusion: cannot import its package {name!r} from {_HOME} ({exc})") from None
        where = Path(getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", [])), "?"))
        if _HOME not in where.resolve().parents:
            raise ImportError(f"transfusion: the name {name!r} is taken by {where} (a package of your program or "
                              f"another library), but transfusion needs its own {_HOME / name}; rename yours, or run "
                              f"from a directory without one")


_own_packages()

from utils.core.errors import TransFusionError  # noqa: E402  (after the check above)
from utils.deploy.export import export_onnx  # noqa: E402
from utils.inference.detector import Detection, Detector  # noqa: E402
from utils.run.thresholds import Threshold  # noqa: E402
