"""What each ``-c`` choice runs; `Experiment.py` only parses and dispatches here.

Imports are inside the functions so that a command loads only what it uses.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable


def run_train(args: argparse.Namespace) -> Any:
    from utils.training.command import run_train as train

    return train(args)


def run_test(args: argparse.Namespace) -> Any:
    from utils.evaluation.command import run_test as test

    return test(args)


def run_predict(args: argparse.Namespace) -> Any:
    from utils.inference.predict import predict
    from utils.machine.distributed import pick_device

    return predict(args, pick_device(args.device))


def run_export(args: argparse.Namespace) -> Any:
    from utils.deploy.export import run_export as export

    return export(args)


def run_calibrate(args: argparse.Namespace) -> Any:
    from utils.inference.calibrate import run_calibrate as calibrate

    return calibrate(args)


def run_demo(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The demo recipe (utils/demo/recipe.py): its data, then training and testing as -c train and
    -c test do them, then its figure and summary."""
    from utils.demo import recipe as demo
    from utils.evaluation.command import test_categories
    from utils.machine.distributed import pick_device
    from utils.training.command import run_train as train

    started = time.perf_counter()
    device = pick_device(args.device)
    categories, paths = demo.prepare(args)
    train(args, categories)  # Ctrl-C raises Interrupted after saving: no test of a half-trained model
    rows = {c: tested.metrics for c, tested in test_categories(args, categories, paths, device).items()}
    demo.report(rows, paths, categories, started, device)
    return rows


def run_train_multiclass(args: argparse.Namespace) -> Any:
    from utils.training.command import run_train_multiclass as train

    return train(args)


def run_test_multiclass(args: argparse.Namespace) -> Any:
    from utils.evaluation.command import run_test_multiclass as test

    return test(args)


def run_submit(args: argparse.Namespace) -> Any:
    from utils.evaluation.submit import run_submit as submit

    return submit(args)


# The commands of -c, in the order --help lists them.
COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "train": run_train, "test": run_test, "demo": run_demo, "predict": run_predict, "calibrate": run_calibrate,
    "export": run_export, "train_multiclass": run_train_multiclass, "test_multiclass": run_test_multiclass,
    "submit": run_submit,
}
# What utils/Argparser.py checks per command: the ones that train a network from the flags, and
# those that need a run folder (-r) and a dataset (-d).
TRAINING = frozenset({"train", "train_multiclass", "demo"})
NEEDS_RUN = frozenset({"train", "train_multiclass", "test", "test_multiclass", "predict", "export", "calibrate",
                       "submit"})
NEEDS_DATA = frozenset({"train", "train_multiclass", "test", "test_multiclass", "submit"})
