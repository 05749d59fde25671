"""Command-line flags: those of the original TransFusion, plus this project's additions.

List-valued flags (``--unet-ch-mults``, ``--unet-attn``, ``--unet-group-conv``) really parse
from the command line: ``--unet-ch-mults 1 2 2 2`` or ``--unet-ch-mults 1,2,2,2``;
booleans accept T/F, true/false, 1/0.
"""
from __future__ import annotations

import argparse
import math
from typing import Sequence

from data.catalog import DATASETS
from data.io import pixel_limit
from data.perlin import check_size
from models.modes import MODES, has_depth
from models.runtime import AMP_CHOICES, BACKENDS, MEMORY_FORMATS
from models.scoring import DEFAULT_SCORING
from models.transparency import TransparencyProcess, check_num_steps
from utils.commands import COMMANDS, NEEDS_DATA, NEEDS_RUN, TRAINING
from utils.core.errors import TransFusionError
from utils.demo.recipe import DEMO_SETTINGS
from utils.inference.calibration_rule import DEFAULT_CONFIDENCE
from utils.machine.resources import WORKERS_RULE
from utils.run.settings import DEFAULT_DIFFUSION_STEPS, DEFAULT_IMG_SIZE, data_workers, runtime_options, unet_config
from utils.training.caching import CACHE_RULE


def _fraction(text: str) -> float:
    """A fraction: 0.05, or a percentage such as 5%."""
    value = text.strip()
    try:
        return float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.05 or 5%, got {text!r}") from None


# -c submit's thresholds by name (docs/mvtec_ad2.md); the other commands take a number only.
SUBMIT_THRESHOLDS = ("validation", "calibrated")


def _threshold(text: str) -> float | str:
    """A decision threshold: a number, or (for -c submit) one of SUBMIT_THRESHOLDS."""
    if text.strip() in SUBMIT_THRESHOLDS:
        return text.strip()
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (or, with -c submit, {' or '.join(SUBMIT_THRESHOLDS)}), "
                                         f"got {text!r}") from None


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("t", "true", "1", "yes", "y"):
        return True
    if value in ("f", "false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (T/F, true/false, 1/0), got {text!r}")


class _ListAction(argparse.Action):
    """Collect ``nargs='+'`` values, also splitting comma-separated ones, with a converter."""

    def __init__(self, *args, convert=int, **kwargs):
        self.convert = convert
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        items = [part for v in values for part in str(v).replace("[", "").replace("]", "").split(",")
                 if part.strip()]
        try:
            setattr(namespace, self.dest, [self.convert(p) for p in items])
        except (ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"{option_string}: {exc}")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``, exit 2), like the command line's own errors,
    instead of the multi-line usage text."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see python Experiment.py --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="Experiment.py",
        description="TransFusion: transparency-based diffusion for anomaly detection (ECCV 2024).")
    p.add_argument("-c", "--choice", choices=tuple(COMMANDS), required=True,
                   help="train, test, demo (built-in data, runs anywhere), predict (unlabelled images), "
                        "calibrate (a decision threshold from good images), export (the network as ONNX), "
                        "train_multiclass / test_multiclass (one network for every category), "
                        "submit (an MVTec AD 2 submission folder)")
    p.add_argument("-r", "--run-name", default=None, help="run folder name under --log-path")
    p.add_argument("-d", "--data-path", default=None, help="dataset root, as unpacked")
    p.add_argument("--log-path", default="./experiments/", help="where run folders live")
    p.add_argument("-ds", "--dataset", choices=DATASETS, default="mvtec")
    p.add_argument("--mode", choices=MODES, default="rgb", help="rgb, d (depth) or rgbd (MVTec 3D-AD)")
    p.add_argument("--fg-mask-path", default=None,
                   help="released foreground masks (<path>/<dataset>_masks/<category>/train/good/); default "
                        "./fg_masks/ where it holds them, else masks are computed (the run says so)")
    p.add_argument("--computed-fg-masks", action="store_true",
                   help="train, -ds mvtec_ad2: compute foreground masks where none are released, as for the other "
                        "datasets (off by default there: never checked on its real images)")
    p.add_argument("--no-fg-masks", action="store_true", help="synthesise anomalies anywhere")
    p.add_argument("--dtd-path", default=None,
                   help="Describable Textures Dataset root (images/<texture>/*.jpg); "
                        "without it a small built-in texture bank is used")
    p.add_argument("--category", default="all",
                   help="one category, a comma-separated list, or all (train_multiclass: every category folder "
                        "under -d)")
    p.add_argument("--resume", action="store_true", help="continue a killed/stopped training run")
    p.add_argument("--overwrite", action="store_true",
                   help="train: start a category that has weights again; its weights, meta, training states "
                        "and results move to <run>/replaced-<time>/<category>/ (nothing is deleted)")
    p.add_argument("--visualize", action="store_true", help="write a picture per test image")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--epoch-num", type=int, default=1501,
                   help="epochs to train (1501: the released weights are the model after epoch index 1500)")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--bs", type=int, default=8, help="training batch size (per process)")
    p.add_argument("--step-size", type=int, default=800, help="StepLR step, in epochs")
    p.add_argument("--gamma", type=float, default=0.1, help="StepLR factor")
    p.add_argument("--diffusion-num-steps", type=int, default=DEFAULT_DIFFUSION_STEPS,
                   help="train: T; test/predict/calibrate/export take the run's own T (a different one is refused)")
    p.add_argument("--unet-channel-num", type=int, default=None,
                   help="UNet base width N (default 64); rgbd builds the two-branch network of 2N channels")
    p.add_argument("--unet-ch-mults", nargs="+", action=_ListAction, convert=int, default=[1, 2, 2, 2])
    p.add_argument("--unet-attn", nargs="+", action=_ListAction, convert=_bool,
                   default=[False, False, True, True])
    p.add_argument("--unet-group-conv", nargs="+", action=_ListAction, convert=_bool,
                   default=[True, True, True, True])
    p.add_argument("--unet-n-blocks", type=int, default=2)
    p.add_argument("--img-size", type=int, default=DEFAULT_IMG_SIZE,
                   help="train: working resolution (multiple of 32); other commands take the run's own size, "
                        "and a size given here overrides it (the run says so)")
    p.add_argument("--eval-kernel-size", type=int, default=DEFAULT_SCORING.kernel_size)
    p.add_argument("--eval-w", type=float, default=DEFAULT_SCORING.weight)
    p.add_argument("--eval-steps", type=int, default=None, metavar="K",
                   help="test/predict (and evaluation during training): a strided reverse schedule of K "
                        "steps instead of all T-2 (docs/step_study.md); opt-in, changes the scores")
    p.add_argument("--early-stop", type=int, default=None, metavar="N",
                   help="test/predict: stop an image once its thresholded mask has not changed for N "
                        "steps (the rest count its last probabilities); opt-in, changes the scores")
    p.add_argument("--eval-epoch-num", type=int, default=750,
                   help="evaluate on the test set after each epoch whose 0-based index is a multiple "
                        "of N (the first one included; 0: never)")
    return _add_project_flags(p)


def _add_project_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags this project adds to the original's (a second screen of build_parser)."""
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu... (default: cuda if available)")
    p.add_argument("--workers", type=int, default=None, help=f"DataLoader worker processes ({WORKERS_RULE})")
    p.add_argument("--no-image-cache", action="store_true", help=CACHE_RULE.replace("%", "%%"))
    p.add_argument("--eval-bs", type=int, default=8, help="evaluation batch size (same numbers at any size)")
    p.add_argument("--save-every", type=int, default=10, help="checkpoint every N epochs")
    p.add_argument("--keep-last", type=int, default=2, help="training-state checkpoints to keep")
    p.add_argument("--input", default=None, help="predict: an image, a folder or a glob")
    p.add_argument("--threshold", type=_threshold, default=None,
                   help="predict (and export, into its JSON): decision threshold, defect when score >= it (default: "
                        "the calibrated threshold from -c calibrate, else the F1-max threshold from -c test); "
                        "submit: validation (default: mean + 3 std of the validation/good maps), calibrated, or a "
                        "number, for the thresholded maps")
    p.add_argument("--out", default=None, metavar="FOLDER",
                   help="submit: where the MVTec AD 2 submission goes (default <log-path>/<run>/submission)")
    p.add_argument("--target-fpr", type=_fraction, default=None, metavar="A",
                   help="calibrate: the false-alarm rate on good parts to stay under, as 0.01 or 1%%")
    p.add_argument("--confidence", type=_fraction, default=None, metavar="G",
                   help=f"calibrate: the confidence that the false-alarm rate is at most A (default {DEFAULT_CONFIDENCE:g})")
    p.add_argument("--calib-path", default=None, metavar="FOLDER",
                   help="calibrate: good images training never saw (default: the layout's validation/good "
                        "with -d, else the images -c train --holdout left out)")
    p.add_argument("--holdout", type=int, default=None, metavar="K",
                   help="train: leave K good training images out of training (evenly spaced, recorded in the "
                        "meta) for -c calibrate")
    p.add_argument("--demo-path", default="./demo_data", help="demo: where the built-in data is cached")
    p.add_argument("--amp", choices=AMP_CHOICES, default="off",
                   help="mixed precision for the network (bf16 uses the CPU's bf16 units where present)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="predict: who runs the network: torch, or onnxruntime on the file -c export wrote (CPU, "
                        "float32; --amp, --memory-format and --compile do not apply)")
    p.add_argument("--memory-format", choices=MEMORY_FORMATS, default="contiguous",
                   help="tensor layout of the network: contiguous (the original's, default) or "
                        "channels_last (opt-in; its other summation order flips near-threshold mask pixels, so "
                        "scores differ slightly; whether it is faster depends on the machine and size: "
                        "docs/performance.md)")
    p.add_argument("--malloc-reuse", action="store_true",
                   help="Linux/glibc: reuse freed memory of every size instead of unmapping large "
                        "blocks: faster CPU training at large sizes, for more peak memory (docs/performance.md)")
    p.add_argument("--class-embedding", action="store_true",
                   help="train_multiclass: a learned embedding per category added to the step embedding (this "
                        "project's addition; predict/calibrate/export then need --category)")
    p.add_argument("--split-categories", action="store_true",
                   help="under torchrun with --category all: each process trains its own categories "
                        "instead of sharing every category's batches (DistributedDataParallel)")
    p.add_argument("--preview-synthesis", type=int, default=None, metavar="N",
                   help="train: write the first N training samples (x0, x_t, masks, t) as training would "
                        "make them to <run>/synthesis_preview/<category>.npz and .png, then stop")
    p.add_argument("--dry-run", action="store_true",
                   help="train: check the dataset, configuration, device and disk, then stop")
    p.add_argument("--skip-broken", action="store_true",
                   help="train: train the categories whose files all open and list the broken ones at the end "
                        "(default: refuse before training anything, naming every broken category)")
    p.add_argument("--max-image-pixels", type=int, default=None, metavar="N",
                   help=f"decode images of up to N pixels (default: PIL's guard against decompression bombs, which "
                        f"refuses images of more than {int(pixel_limit() or 0):,} pixels unread)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line. ``-c demo`` takes the demo recipe's settings
    (utils/demo/recipe.py) as its defaults, so any flag given still wins."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.choice == "demo":
        parser.set_defaults(**DEMO_SETTINGS)
        args = parser.parse_args(argv)
        args.data_path = args.demo_path
    args.given_flags = given_flags(argv)
    _check(parser, args)
    args.workers = data_workers(args)
    return args


def given_flags(argv: Sequence[str] | None) -> frozenset[str]:
    """The destinations of the flags on the command line itself, told apart from their defaults (a
    run's own settings win over a default, not over a flag the user typed: utils/run/settings.py)."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return frozenset(vars(probe.parse_args(argv)))


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Combinations and values argparse cannot check by itself; parser.error exits with 2."""
    if args.choice in NEEDS_RUN and not args.run_name:
        parser.error(f"-c {args.choice} needs -r/--run-name")
    if args.choice in NEEDS_DATA and not args.data_path:
        parser.error(f"-c {args.choice} needs -d/--data-path")
    if args.choice == "predict" and not args.input:
        parser.error("-c predict needs --input (an image, a folder or a glob)")
    try:
        check_size(args.img_size)
        check_num_steps(args.diffusion_num_steps)
    except (TransFusionError, ValueError) as exc:
        parser.error(str(exc))
    if has_depth(args.mode) and args.dataset != "mvtec3d":
        parser.error(f"--mode {args.mode} needs depth: use it with -ds mvtec3d")
    for flag in ("epoch_num", "bs", "eval_kernel_size", "eval_bs", "save_every"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.eval_steps is not None and args.eval_steps < 1:
        parser.error(f"--eval-steps must be at least 1, got {args.eval_steps}")
    if args.eval_steps is not None and args.choice in TRAINING:
        # training evaluates with the T it trains; other commands check against the run's T
        # (utils/run/settings.py), once the run is read
        try:
            TransparencyProcess(args.diffusion_num_steps).schedule(args.eval_steps)
        except ValueError as exc:
            parser.error(f"--eval-steps {args.eval_steps} with --diffusion-num-steps {args.diffusion_num_steps}: {exc}")
    if args.early_stop is not None and args.early_stop < 1:
        parser.error(f"--early-stop must be at least 1, got {args.early_stop}")
    if args.preview_synthesis is not None and args.preview_synthesis < 1:
        parser.error(f"--preview-synthesis must be at least 1, got {args.preview_synthesis}")
    if args.preview_synthesis is not None and args.choice not in ("train", "train_multiclass"):
        parser.error("--preview-synthesis goes with -c train or -c train_multiclass")
    if args.skip_broken and args.choice != "train":
        parser.error("--skip-broken goes with -c train")
    _check_ranges(parser, args)
    _check_network(parser, args)
    _check_ownership(parser, args)
    _check_calibration(parser, args)
    _check_backend(parser, args)


def _check_backend(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--backend onnxruntime runs the exported float32 network on the CPU: the torch-only options
    mean nothing there, and it goes with -c predict only."""
    if args.backend == "torch":
        return
    if args.choice != "predict":
        parser.error(f"--backend {args.backend} goes with -c predict (-c export writes the network it runs)")
    torch_only = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                  for k, v in runtime_options(args).changed().items()]
    if torch_only:
        parser.error(f"{', '.join(torch_only)} means nothing with --backend {args.backend} (ONNX Runtime runs the "
                     f"exported float32 network in its own layout); leave it out, or use --backend torch")
    if args.device is not None and not args.device.startswith("cpu"):
        parser.error(f"--backend {args.backend} runs on the CPU (the onnxruntime package): use --device cpu, or "
                     f"--backend torch on {args.device}")


def _check_ranges(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Values that parse but make no sense: each would fail later, after the run folder exists,
    or silently change what -c test writes (e.g. --eval-w 2)."""
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a finite number > 0, got {args.lr}")
    if not (math.isfinite(args.gamma) and 0 < args.gamma <= 1):
        parser.error(f"--gamma (StepLR factor) must be in (0, 1], got {args.gamma}")
    if not 0 <= args.eval_w <= 1:
        parser.error(f"--eval-w (weight of the discriminative map) must be in [0, 1], got {args.eval_w}")
    if isinstance(args.threshold, str) and args.choice != "submit":
        parser.error(f"--threshold {args.threshold} goes with -c submit; give a number here")
    if isinstance(args.threshold, float) and not math.isfinite(args.threshold):
        parser.error(f"--threshold must be a finite number, got {args.threshold}")
    if args.out is not None and args.choice != "submit":
        parser.error("--out goes with -c submit (the submission folder)")
    for flag, least in (("step_size", 1), ("keep_last", 1), ("workers", 0), ("eval_epoch_num", 0),
                        ("seed", 0), ("unet_n_blocks", 1)):
        if getattr(args, flag) is not None and getattr(args, flag) < least:
            parser.error(f"--{flag.replace('_', '-')} must be at least {least}, got {getattr(args, flag)}")
    if args.max_image_pixels is not None and args.max_image_pixels < 1:
        parser.error(f"--max-image-pixels must be at least 1, got {args.max_image_pixels}")
    if args.unet_channel_num is not None and args.unet_channel_num < 1:
        parser.error(f"--unet-channel-num must be at least 1, got {args.unet_channel_num}")


def _check_network(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The --unet-* flags must describe a network (one value per level, widths GroupNorm can take):
    training builds it; other commands compare the flags given with the checkpoint's."""
    try:
        unet_config(args)
    except TransFusionError as exc:
        parser.error(str(exc))


def _check_ownership(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--resume continues a category's training, --overwrite starts it again: not both."""
    if args.class_embedding and args.choice != "train_multiclass":
        parser.error("--class-embedding goes with -c train_multiclass (the network it conditions keeps it: other "
                     "commands read it from the run)")
    if args.split_categories and args.choice == "train_multiclass":
        parser.error("--split-categories splits categories among processes; -c train_multiclass trains one network "
                     "on all of them (its processes share the batches)")
    if args.resume and args.overwrite:
        parser.error("--resume continues the trained weights and --overwrite replaces them: give one of the two")
    if args.overwrite and args.choice not in TRAINING:
        parser.error(f"--overwrite goes with -c train, -c train_multiclass (or -c demo), not -c {args.choice}")


def _check_calibration(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """-c calibrate's flags and -c train --holdout: present where needed, in range, nowhere else."""
    if args.choice == "calibrate":
        if args.target_fpr is None:
            parser.error("-c calibrate needs --target-fpr A, the false-alarm rate to stay under (e.g. 0.01 or 1%)")
        if args.confidence is None:
            args.confidence = DEFAULT_CONFIDENCE
    else:
        for flag in ("target_fpr", "confidence", "calib_path"):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag.replace('_', '-')} goes with -c calibrate")
    for flag in ("target_fpr", "confidence"):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and 0 < value < 1):
            parser.error(f"--{flag.replace('_', '-')} must lie strictly between 0 and 1 (e.g. 0.05 or 5%), "
                         f"got {value:g}")
    if args.holdout is not None:
        if args.choice not in ("train", "train_multiclass"):
            parser.error("--holdout goes with -c train or -c train_multiclass")
        if args.holdout < 1:
            parser.error(f"--holdout must be at least 1 (the number of good training images to leave out), "
                         f"got {args.holdout}")
