"""Checks that run before a long job, so it fails in seconds rather than after an epoch.

- `check_run_folder`: the run folder is writable and has room for the checkpoints.
- `check_categories`: every file of each category opens (images and masks, and masks match
  their images in size); -c train runs it on every category before training the first, and
  refuses with one line naming all broken ones unless --skip-broken.
- `dry_run` (``--dry-run``): that, and the configuration, end to end, without training: the
  device exists, and an estimate of the memory a training step will need.
"""
from __future__ import annotations

import argparse
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from data.discovery import find_test_samples, find_train_images, resolve_categories, scan_category
from data.io import too_many_pixels
from models.modes import has_rgb
from models.unet import TransFusionUNet, UNetConfig
from utils.core.errors import TransFusionError
from utils.run.ownership import start_refusal
from utils.run.paths import MULTICLASS, RunPaths
from utils.run.settings import unet_config
from utils.training import caching

GIB = 1024 ** 3


def parameter_count(args: argparse.Namespace) -> int:
    with torch.device("meta"):
        net = TransFusionUNet(unet_config(args))
    return sum(p.numel() for p in net.parameters())


def forward_gflop(cfg: UNetConfig, image_size: int) -> float:
    """GFLOP of one network call on one image, counted on fake tensors (no memory, no compute),
    attention included (its math form is what gets counted; the fused kernel computes the same)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FakeTensorMode():
        net = TransFusionUNet(cfg).eval()
        x = torch.empty(1, cfg.image_channels + 1, image_size, image_size)
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
            net(x, torch.zeros(1, dtype=torch.long))
    return counter.get_total_flops() / 1e9


def checkpoint_bytes(n_params: int, keep_last: int) -> int:
    """Exported weights + `keep_last` training states (weights + AdamW's two moments)."""
    return 4 * n_params * (1 + 3 * keep_last)


def training_memory_estimate(args: argparse.Namespace) -> int:
    """Bytes for one training step: parameters, gradients and AdamW state (16 bytes per
    parameter) plus the activations autograd saves for backward, for the batch size.

    The activations are counted on fake CPU tensors (no memory, no compute), so the count
    follows the network's own choices: the recomputed norm→SiLU of models/recompute.py and the
    fused attention kernel that keeps no [HW, HW] matrix (the meta device would pick the math
    kernel). Transients of the backward pass and the framework itself come on top (the measured
    peak against this estimate: docs/performance.md).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    cfg = unet_config(args)
    saved: dict[int, int] = {}
    with FakeTensorMode():
        net = TransFusionUNet(cfg).train()
        param_ids = {id(p) for p in net.parameters()}

        def pack(t: torch.Tensor) -> torch.Tensor:
            base = t if t._base is None else t._base  # views (q, k, v of one projection) count once
            if id(base) not in param_ids:
                saved[id(base)] = base.numel() * base.element_size()
            return t

        s = args.img_size
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = net(torch.empty(args.bs, cfg.image_channels + 1, s, s), torch.zeros(args.bs, dtype=torch.long))
        del out
    n_params = sum(p.numel() for p in net.parameters())
    return 16 * n_params + sum(saved.values())


def check_run_folder(paths: RunPaths, needed_bytes: int) -> None:
    """Fail now if the run folder cannot be written or the disk cannot hold the checkpoints."""
    try:
        paths.models.mkdir(parents=True, exist_ok=True)
        probe = paths.models / f".write-test-{uuid.uuid4().hex}"
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        raise TransFusionError(f"cannot write to the run folder {paths.models} ({exc.strerror or exc}); "
                               f"choose another --log-path") from None
    free = shutil.disk_usage(paths.models).free
    if free < needed_bytes:
        raise TransFusionError(
            f"{paths.models} has {free / GIB:.2f} GiB free but the checkpoints need about "
            f"{needed_bytes / GIB:.2f} GiB; free some space, lower --keep-last or choose another --log-path")


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception as exc:  # noqa: BLE001 - any decoder complaint is a bad file
        too_large = too_many_pixels(path, "image", exc)
        if too_large is not None:
            raise too_large from None
        raise TransFusionError(f"{path} is not a readable image ({type(exc).__name__}: {exc}); "
                               f"replace or remove it") from None


@dataclass
class CategoryCheck:
    """What the file check found in one category that opens: counts, and masks of another size."""

    category: str
    n_train: int
    n_test: int
    n_anomalous: int
    mismatched_masks: int   # masks whose size differs from their image's (they will be resized)
    scan_line: str | None   # what discovery left out of the folders, if anything


def check_category_files(args: argparse.Namespace, category: str) -> CategoryCheck:
    """Every training and test image (and mask) of ``category`` opens: a TransFusionError naming the
    first file that does not, or the part of the layout that is missing."""
    train = find_train_images(args.dataset, args.data_path, category)
    for p in train:
        _image_size(p)
    tests = find_test_samples(args.dataset, args.data_path, category)
    mismatched = 0
    for s in tests:
        hw = _image_size(s.image_path)
        if s.mask_path is not None and _image_size(s.mask_path) != hw:
            mismatched += 1
    scan = scan_category(args.dataset, args.data_path, category)
    return CategoryCheck(category, len(train), len(tests), sum(s.label for s in tests), mismatched,
                         scan.line() if scan.skipped else None)


def check_categories(args: argparse.Namespace, categories: list[str],
                     progress: bool = True) -> tuple[list[CategoryCheck], dict[str, str]]:
    """`check_category_files` for each category: what opened, and why each broken one did not."""
    checked: list[CategoryCheck] = []
    broken: dict[str, str] = {}
    for cat in tqdm(categories, desc="checking the dataset's files", disable=not progress or len(categories) < 2,
                    leave=False, unit="category"):
        try:
            checked.append(check_category_files(args, cat))
        except TransFusionError as exc:
            broken[cat] = str(exc)
    return checked, broken


def broken_refusal(broken: dict[str, str], n_categories: int) -> str:
    """One line naming every broken category and why, and the way out."""
    rest = n_categories - len(broken)
    listed = "; ".join(f"{cat}: {why}" for cat, why in broken.items())
    way_out = (f"fix {'it' if len(broken) == 1 else 'them'}, or add --skip-broken to train the other {rest}"
               if rest else "fix them first")
    return (f"{len(broken)} of the {n_categories} categories cannot be trained, nothing was trained: {listed}; "
            f"{way_out}")


def _cache_report(args: argparse.Namespace, largest: tuple[int, str]) -> str:
    """--dry-run's line on the decoded-image cache for the largest training set (and the textures)."""
    from utils.training.feed import texture_source

    textures = texture_source(args, announce=False) if has_rgb(args.mode) else None
    if args.dtd_path and textures is not None:
        print(f"textures: {textures.description}")
    return caching.plan(largest[0], args.mode, args.img_size, textures, args.no_image_cache).report(largest[1],
                                                                                                  args.img_size)


def dry_run(args: argparse.Namespace, device: torch.device, categories: list[str] | None = None,
            multiclass: bool = False) -> None:
    """Check files, masks, sizes, device and memory; print a report; train nothing. ``multiclass``:
    the one network of -c train_multiclass on the union of ``categories``."""
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f"; {args.workers} DataLoader workers")
    if categories is None:
        categories = resolve_categories(args.dataset, args.data_path, args.category)
    checked, broken = check_categories(args, categories, progress=not args.quiet)
    if broken and not args.skip_broken:
        raise TransFusionError(broken_refusal(broken, len(categories)))
    problems = len(broken)
    largest = max(((c.n_train, c.category) for c in checked), default=(0, ""))
    n_train = sum(c.n_train for c in checked)  # a multi-class network keeps the union's
    for c in checked:
        if c.mismatched_masks:
            problems += 1
            print(f"[{c.category}] warning: {c.mismatched_masks} mask(s) differ in size from their image (they will "
                  f"be resized)")
        print(f"[{c.category}] {c.n_train} training images, {c.n_test} test images ({c.n_anomalous} anomalous): "
              f"readable")
        if c.scan_line:
            print(c.scan_line)
    for cat, why in broken.items():
        print(f"[{cat}] warning: --skip-broken would skip it: {why}")
    networks = [MULTICLASS] if multiclass else categories
    refusal = start_refusal(RunPaths(args.log_path, args.run_name), networks, args.resume, args.overwrite)
    if refusal:
        problems += 1
        print(f"warning: -c train would refuse to start: {refusal}")
    print(_cache_report(args, (n_train, "the union") if multiclass else (largest[0], f"{largest[1]}, the largest "
                                                                                   f"category")))
    n_params = parameter_count(args)
    mem = training_memory_estimate(args)
    need = checkpoint_bytes(n_params, args.keep_last)
    print(f"network: {n_params / 1e6:.1f} M parameters; a training step at batch {args.bs}, "
          f"{args.img_size} px keeps about {mem / GIB:.1f} GiB ({'GPU' if device.type == 'cuda' else 'RAM'}: "
          f"weights, optimizer state, saved activations; the peak is ~1.5x that); "
          f"checkpoints about {need / GIB:.2f} GiB")
    steps = -(-(n_train - (args.holdout or 0) * len(categories)) // args.bs) if multiclass else None
    if steps is not None:
        tflop = 3 * forward_gflop(unet_config(args), args.img_size) * args.bs / 1e3  # forward + backward
        print(f"union: {n_train} training images of {len(categories)} categories, {steps} steps per epoch, "
              f"{steps * args.epoch_num} steps for --epoch-num {args.epoch_num}, about {tflop:.2g} TFLOP per step")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if 1.5 * mem > free:
            problems += 1
            print(f"warning: the GPU has {free / GIB:.1f} GiB free; lower --bs or use --amp bf16")
    check_run_folder(RunPaths(args.log_path, args.run_name), need)
    print(f"dry run: {len(categories)} categor{'y' if len(categories) == 1 else 'ies'} checked, "
          f"{problems} warning(s); ready to train")
