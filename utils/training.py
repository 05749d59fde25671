"""Training one category (SPEC §5): AdamW + StepLR, half-batch synthesis, the four losses.

A run can be killed at any moment and continued with ``--resume``: the training state
(model, optimizer, scheduler, the step's random generator, epoch and batch position) is saved
atomically every ``--save-every`` epochs, on Ctrl-C and at the end, and the data order and
synthesis of every batch depend only on (seed, epoch, batch), so a resumed run continues the
very sequence an uninterrupted one would have followed.
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from data.datasets import TestDataset, TrainDataset, find_test_samples, find_train_images
from data.fg_masks import DEFAULT_FG_MASK_PATH, FgMaskSource
from data.synthesis import AnomalySynthesizer
from data.textures import TextureSource
from data.training_data import make_train_loader
from models.losses import transfusion_loss
from models.modes import network_width
from models.transparency import TransparencyProcess, make_training_input
from models.unet import TransFusionUNet
from utils.atomic import atomic_torch_save
from utils.errors import TransFusionError
from utils.evaluation import evaluate, fmt_pct
from utils.speed import apply_memory_format, autocast, grad_scaler, maybe_compile
from utils.distributed import SINGLE, Dist, any_rank, barrier, gather_objects, sync_buffers
from utils.runs import RunPaths, build_meta, cpu_state_dict, save_weights, unet_config_from_args

MAX_BAD_STEPS = 5  # consecutive non-finite losses before the run stops


@dataclass
class TrainOutcome:
    category: str
    epochs_done: int
    seconds: float
    last_metrics: dict[str, Any] | None
    interrupted: bool = False
    model: torch.nn.Module | None = None  # the trained network (unwrapped)


class _StopFlag:
    """Turns the first Ctrl-C into a request to checkpoint and stop at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_StopFlag":
        def handler(signum, frame):  # noqa: ARG001
            if self.requested:  # second Ctrl-C: give up immediately
                raise KeyboardInterrupt
            self.requested = True
            print("\nCtrl-C: saving a checkpoint at the end of this step (press again to abort)")

        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not in the main thread
            self._previous = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def texture_source(args: Any, announce: bool = True) -> TextureSource:
    if args.dtd_path:
        return TextureSource.from_dtd(args.dtd_path)
    source = TextureSource.builtin()
    if announce:
        print(f"note: no --dtd-path given, anomaly textures come from the {source.description}")
    return source


def _save_state(paths: RunPaths, category: str, net: torch.nn.Module, opt: torch.optim.Optimizer,
                sched: Any, scaler: Any, gen: torch.Generator, epoch: int, batch: int, keep_last: int,
                meta: dict[str, Any], dist: Dist = SINGLE) -> None:
    """Training state first, then the exported weights; old states pruned last. Every rank
    calls this (their step generators differ); rank 0 alone writes."""
    generators = gather_objects(dist, gen.get_state())
    if dist.is_main:
        state = {
            "model": cpu_state_dict(net),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "generators": generators,  # one per rank
            "epoch": epoch,          # epochs fully done
            "batch": batch,          # batches of epoch `epoch` already done (mid-epoch save)
            "meta": meta,
        }
        atomic_torch_save(state, paths.train_state(category, epoch, batch))
        save_weights(paths, category, net, meta)
        for old in paths.train_states(category)[:-max(1, keep_last)]:
            old.unlink(missing_ok=True)
    barrier(dist)


def _latest_state(paths: RunPaths, category: str) -> dict[str, Any] | None:
    """The newest training state that loads; a damaged newest file falls back to an older one."""
    for p in reversed(paths.train_states(category)):
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any damage: try the previous one
            print(f"warning: {p} is unreadable ({type(exc).__name__}); trying an older checkpoint")
    return None


def _foreground_masks(args: Any, category: str, paths: RunPaths, dist: Dist) -> FgMaskSource | None:
    """Rank 0 computes (and caches) the masks first; the other ranks then read the cache.

    The released masks are looked for in --fg-mask-path, else in ./fg_masks/ as the released
    code does; where the default folder lacks them they are computed, and the run says so."""
    if args.mode != "rgb":
        return None  # depth modes use the depth plane mask, made by the dataset
    train_paths = find_train_images(args.dataset, args.data_path, category)
    fg = None
    for turn in (True, False):
        if dist.is_main == turn:
            fg = FgMaskSource.for_category(args.dataset, category, train_paths, args.img_size,
                                           args.fg_mask_path or DEFAULT_FG_MASK_PATH, not args.no_fg_masks,
                                           paths.fg_mask_cache(category), required=args.fg_mask_path is not None)
        barrier(dist)
    return fg


def fg_mask_record(args: Any, category: str, fg: FgMaskSource | None) -> dict[str, Any]:
    """Which foreground masks placed the synthetic anomalies, for the meta and summary files."""
    if fg is not None:
        return fg.record()
    if args.mode != "rgb":
        return {"kind": "depth-plane", "path": ""}
    if args.no_fg_masks:
        return {"kind": "none", "path": "", "why": "--no-fg-masks"}
    return {"kind": "none", "path": "", "why": "texture category"}


def evaluates_after(epoch_index: int, every: int) -> bool:
    """The released schedule: evaluate after the epoch of 0-based index e when e % every == 0
    (so after the first epoch, and after the 751st with the default 750); 0 means never."""
    return every > 0 and epoch_index % every == 0


@dataclass
class TrainingData:
    """What feeds one category's training: the same objects for training and --preview-synthesis."""

    process: TransparencyProcess
    train_set: TrainDataset
    loader: Any
    fg: FgMaskSource | None
    depth_norm: tuple[float, float] | None


def training_data(args: Any, category: str, paths: RunPaths, dist: Dist = SINGLE) -> TrainingData:
    """Foreground masks, the training set, the synthesizer and the half-anomalous loader."""
    process = TransparencyProcess(args.diffusion_num_steps, args.mode)
    fg = _foreground_masks(args, category, paths, dist)
    if fg is not None and dist.is_main:
        print(f"[{category}] {fg.note}")
    train_set = TrainDataset(args.dataset, args.data_path, category, args.mode, args.img_size, fg_masks=fg)
    textures = texture_source(args, announce=False) if args.mode != "d" else None
    synthesizer = AnomalySynthesizer(args.mode, args.img_size, textures)
    loader = make_train_loader(train_set, synthesizer, args.bs, args.seed, args.workers,
                               rank=dist.rank, world_size=dist.world_size)
    return TrainingData(process, train_set, loader, fg, train_set.depth_norm)


def _announce_evaluation(args: Any, category: str, test_set: TestDataset, start_epoch: int,
                         device: torch.device, log: Any) -> None:
    """Say when the test set will be evaluated during training, and what that costs on a CPU."""
    epochs = [e + 1 for e in range(start_epoch, args.epoch_num) if evaluates_after(e, args.eval_epoch_num)]
    if not epochs:
        return
    shown = ", ".join(str(e) for e in epochs[:4]) + (f", ... ({len(epochs)} in all)" if len(epochs) > 4 else "")
    line = (f"[{category}] evaluating the {len(test_set)} test images after epoch{'s' if len(epochs) > 1 else ''} "
            f"{shown} (--eval-epoch-num {args.eval_epoch_num}")
    if device.type == "cpu":
        # 18 passes of 366.5 GFLOP at 256 px with the default width; FLOPs scale with pixels x width^2
        width = network_width(args.mode, args.unet_channel_num) / (128 if args.mode == "rgbd" else 64)
        tflop = (args.diffusion_num_steps - 2) * 366.5e-3 * (args.img_size / 256) ** 2 * width ** 2
        line += (f"); on a CPU each image costs {tflop:.2g} TFLOP, about 1-2 min per image at 256 px "
                 f"on 2 cores; --eval-epoch-num 0 turns it off")
    else:
        line += "; 0 turns it off)"
    log(line)


def train_category(args: Any, category: str, device: torch.device, paths: RunPaths,
                   dist: Dist = SINGLE) -> TrainOutcome:
    """Train one category; with ``dist`` enabled, as one rank of DistributedDataParallel."""
    cfg = unet_config_from_args(args)
    progress = not args.quiet and dist.is_main
    log = print if dist.is_main else (lambda *a, **k: None)

    data = training_data(args, category, paths, dist)
    process, loader, depth_norm = data.process, data.loader, data.depth_norm

    test_set = None
    if args.eval_epoch_num > 0 and find_test_samples(args.dataset, args.data_path, category):
        test_set = TestDataset(args.dataset, args.data_path, category, args.mode, args.img_size,
                               depth_norm=depth_norm)

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    net = apply_memory_format(TransFusionUNet(cfg).to(device), args.memory_format)
    scaler = grad_scaler(device, args.amp)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=args.step_size, gamma=args.gamma)
    # t and rotation draws: rank 0 uses the seed itself, so one process matches plain training
    gen = torch.Generator().manual_seed(args.seed + dist.rank)
    start_epoch, start_batch = 0, 0

    if args.resume:
        state = _latest_state(paths, category)
        if state is None:
            log(f"[{category}] --resume: no saved training state in {paths.models}, starting afresh")
        else:
            gens = state["generators"]
            if len(gens) != dist.world_size:
                raise TransFusionError(
                    f"the training state in {paths.models} was saved by {len(gens)} process(es); "
                    f"resume it with the same number (torchrun --nproc-per-node {len(gens)})")
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            gen.set_state(gens[dist.rank])
            start_epoch, start_batch = int(state["epoch"]), int(state["batch"])
            log(f"[{category}] resuming at epoch {start_epoch + 1}"
                + (f", batch {start_batch + 1}" if start_batch else ""))
    if start_epoch >= args.epoch_num:
        log(f"[{category}] already trained for {start_epoch} epochs (--epoch-num {args.epoch_num})")
        return TrainOutcome(category, start_epoch, 0.0, None)
    if test_set is not None:
        _announce_evaluation(args, category, test_set, start_epoch, device, log)

    trained = net
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    forward = maybe_compile(trained, args.compile)
    evaluator = maybe_compile(net, args.compile) if dist.enabled else forward

    writer = SummaryWriter(str(paths.tensorboard(category))) if dist.is_main else None
    meta = build_meta(cfg, args, start_epoch, depth_norm)
    meta["fg_masks"] = fg_mask_record(args, category, data.fg)
    steps_per_epoch = len(loader)
    bad_in_a_row = 0
    last_metrics = None
    t0 = time.perf_counter()
    epoch = start_epoch
    with _StopFlag() as stop:
        for epoch in range(start_epoch, args.epoch_num):
            loader.batch_sampler.set_epoch(epoch, start_batch=start_batch)
            net.train()
            sums: dict[str, float] = {}
            n_done = 0
            bar = tqdm(loader, desc=f"[{category}] epoch {epoch + 1}/{args.epoch_num}",
                       disable=not progress, leave=False, unit="batch",
                       total=steps_per_epoch - start_batch)
            for b, batch in enumerate(bar, start=start_batch):
                ti = make_training_input(process, batch["image"].to(device), batch["eps"].to(device),
                                         batch["mask"].to(device), batch["mask_c"].to(device), gen)
                with autocast(device, args.amp):
                    eps_hat, x0_hat, logits = forward(torch.cat((ti.x_t, ti.mask_c), 1), ti.t)
                terms = transfusion_loss(process, ti.x_t, ti.t, ti.x0, ti.eps, ti.mask,
                                         eps_hat.float(), x0_hat.float(), logits.float())
                if any_rank(dist, not bool(torch.isfinite(terms.total)), device):
                    # every rank skips together, or DDP's gradient all-reduce would hang
                    bad_in_a_row += 1
                    log(f"[{category}] warning: non-finite loss at epoch {epoch + 1}, batch {b + 1} "
                          f"({terms.as_dict()}); step skipped")
                    if bad_in_a_row >= MAX_BAD_STEPS:
                        if writer:
                            writer.close()
                        raise TransFusionError(
                            f"{MAX_BAD_STEPS} non-finite losses in a row in category {category}: "
                            f"stopped; the last good checkpoint is in {paths.models} "
                            f"(try a lower --lr, then --resume)")
                    opt.zero_grad(set_to_none=True)
                    continue
                bad_in_a_row = 0
                opt.zero_grad(set_to_none=True)
                scaler.scale(terms.total).backward()
                scaler.step(opt)
                scaler.update()
                n_done += 1
                for k, v in terms.as_dict().items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{terms.total.item():.4f}")
                if any_rank(dist, stop.requested, device):
                    sync_buffers(net, dist)
                    meta.update(epoch=epoch)
                    _save_state(paths, category, net, opt, sched, scaler, gen, epoch, b + 1,
                                args.keep_last, meta, dist)
                    if writer:
                        writer.close()
                    log(f"[{category}] stopped; checkpoint saved. Continue with --resume.")
                    return TrainOutcome(category, epoch, time.perf_counter() - t0, last_metrics, True, net)
            start_batch = 0
            sync_buffers(net, dist)
            sched.step()
            done = epoch + 1
            if writer:
                for k, v in sums.items():
                    writer.add_scalar(f"loss/{k}", v / max(1, n_done), done)
                writer.add_scalar("lr", opt.param_groups[0]["lr"], done)
            if progress and n_done:
                tqdm.write(f"[{category}] epoch {done}: loss {sums['total'] / n_done:.4f}")
            meta.update(epoch=done)
            if done % args.save_every == 0 or done == args.epoch_num:
                _save_state(paths, category, net, opt, sched, scaler, gen, done, 0, args.keep_last, meta, dist)
            if test_set is not None and evaluates_after(epoch, args.eval_epoch_num):
                out = evaluate(evaluator, process, test_set, device, args.eval_kernel_size, args.eval_w,
                               args.eval_bs, 0, progress=progress, desc=f"[{category}] evaluate",
                               amp=args.amp, dist=dist)
                last_metrics = out.metrics
                if writer:
                    for k, v in out.metrics.items():
                        if isinstance(v, float):
                            writer.add_scalar(f"eval/{k}", v, done)
                if dist.is_main:
                    tqdm.write(f"[{category}] epoch {done}: image AUROC {fmt_pct(out.metrics['image_auroc'])}, "
                           f"AUPRO {fmt_pct(out.metrics['aupro'])}")
    if writer:
        writer.close()
    return TrainOutcome(category, args.epoch_num, time.perf_counter() - t0, last_metrics, model=net)
