#!/usr/bin/env python
"""TransFusion command line (ECCV 2024, "A Transparency-Based Diffusion Model for Anomaly Detection").

    python Experiment.py -c demo                       # built-in data, trains and tests on CPU
    python Experiment.py -c train -r RUN -d DATA -ds mvtec --category bottle
    python Experiment.py -c test  -r RUN -d DATA -ds mvtec
    python Experiment.py -c predict -r RUN --category bottle --input 'new/*.png'
    python Experiment.py -c export  -r RUN --category bottle   # ONNX; then -c predict ... --backend onnxruntime

Flags: utils/Argparser.py. What each choice does: utils/commands.py.
"""
from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from typing import TextIO

# Before torch loads libgomp: idle OpenMP threads sleep instead of spinning. On a machine where
# anything else runs, spinning threads wait for descheduled partners and make every step several
# times slower; on an idle one PASSIVE costs a little (docs/performance.md). An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _say(line: str, file: TextIO | None = None) -> None:
    """One line to stderr (or ``file``) in a single write: torchrun's ranks share one pipe, and
    ``print`` writes the text and its newline separately, so two ranks' lines could run together."""
    out = file or sys.stderr
    out.write(line + "\n")
    out.flush()


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """Warnings as ``warning: <message>`` on one line: the default adds ``file:line: UserWarning:``
    and the Python source line that raised it, which says nothing to a user."""
    _say(f"warning: {' '.join(str(message).split())}", file)


def main(argv: list[str] | None = None) -> int:
    import warnings

    previous = warnings.showwarning
    warnings.showwarning = _one_line_warning
    try:
        return _run(argv)
    finally:
        warnings.showwarning = previous  # main() also runs in-process (tests)


def _run(argv: list[str] | None) -> int:
    from utils.Argparser import parse_args
    from utils.core.errors import Interrupted, TransFusionError

    args = parse_args(argv)
    from utils.commands import COMMANDS
    from utils.machine.allocator import tune_allocator

    if not tune_allocator(reuse_large_blocks=args.malloc_reuse) and args.malloc_reuse:
        _say("note: --malloc-reuse needs glibc on Linux; ignored")

    from data.io import max_image_pixels

    try:
        with max_image_pixels(args.max_image_pixels) if args.max_image_pixels else nullcontext():
            COMMANDS[args.choice](args)
    except TransFusionError as exc:
        _say(f"error: {exc}")
        return 2
    except Interrupted as exc:  # Ctrl-C, after saving
        if str(exc):
            _say(f"interrupted: {exc}")
        return 130
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
