"""Checks that run before a long job, so it fails in seconds rather than after an epoch.

- `check_run_folder`: the run folder is writable and has room for the checkpoints.
- `dry_run` (``--dry-run``): every file of the dataset and the configuration, end to end,
  without training: images and masks open and match in size, the device exists, and an
  estimate of the memory a training step will need.
"""
from __future__ import annotations

import argparse
import os
import shutil
import uuid
from pathlib import Path

import torch
from PIL import Image

from data.discovery import find_test_samples, find_train_images, resolve_categories, scan_category
from models.unet import TransFusionUNet, UNetConfig
from utils.core.errors import TransFusionError
from utils.run.ownership import start_refusal
from utils.run.paths import MULTICLASS, RunPaths
from utils.run.settings import unet_config

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
        raise TransFusionError(f"{path} is not a readable image ({type(exc).__name__}: {exc}); "
                               f"replace or remove it") from None


def dry_run(args: argparse.Namespace, device: torch.device, categories: list[str] | None = None,
            multiclass: bool = False) -> None:
    """Check files, masks, sizes, device and memory; print a report; train nothing. ``multiclass``:
    the one network of -c train_multiclass on the union of ``categories``."""
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    if categories is None:
        categories = resolve_categories(args.dataset, args.data_path, args.category)
    problems, n_train = 0, 0
    for cat in categories:
        train = find_train_images(args.dataset, args.data_path, cat)
        for p in train:
            _image_size(p)
        tests = find_test_samples(args.dataset, args.data_path, cat)
        mismatched = 0
        for s in tests:
            hw = _image_size(s.image_path)
            if s.mask_path is not None and _image_size(s.mask_path) != hw:
                mismatched += 1
        if mismatched:
            problems += 1
            print(f"[{cat}] warning: {mismatched} mask(s) differ in size from their image (they will be resized)")
        n_train += len(train)
        n_bad = sum(s.label for s in tests)
        print(f"[{cat}] {len(train)} training images, {len(tests)} test images ({n_bad} anomalous): readable")
        scan = scan_category(args.dataset, args.data_path, cat)
        if scan.skipped:
            print(scan.line())
    networks = [MULTICLASS] if multiclass else categories
    refusal = start_refusal(RunPaths(args.log_path, args.run_name), networks, args.resume, args.overwrite)
    if refusal:
        problems += 1
        print(f"warning: -c train would refuse to start: {refusal}")
    if args.dtd_path:
        from data.textures import TextureSource

        print(f"textures: {TextureSource.from_dtd(args.dtd_path).description}")
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
