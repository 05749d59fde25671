"""Training one category (SPEC §5): AdamW + StepLR, half-batch synthesis, the four losses.

A run can be killed at any moment and continued with ``--resume``: the training state
(utils/train_state.py) is saved atomically every ``--save-every`` epochs, on Ctrl-C and at the
end, and the data order and synthesis of every batch depend only on (seed, epoch, batch), so a
resumed run continues the very sequence an uninterrupted one would have followed.
"""
from __future__ import annotations

import signal
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from data.datasets import TestDataset
from data.discovery import find_test_samples, scan_category
from models.checkpoint import CheckpointError, load_state_dict_file, save_released
from models.losses import LossTerms, transfusion_loss
from models.modes import has_rgb
from models.transparency import make_training_input
from models.unet import TransFusionUNet
from utils.config import runtime_options, scoring_options, unet_config
from utils.distributed import SINGLE, Dist, any_rank, barrier, gather_objects, sync_buffers
from utils.errors import Interrupted, TransFusionError
from utils.evaluation import EvalSettings, evaluate
from utils.locks import held
from utils.reporting import fmt_pct
from utils.runs import RunPaths, build_meta, move_aside, replaced_stamp, start_refusal
from utils.train_state import TrainState
from utils.training_setup import TrainingData, check_same_holdout, fg_mask_record, training_data

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
    """Turns the first Ctrl-C into a request to checkpoint and stop at the next step boundary.

    It acknowledges the key at once (a step can take a minute on a CPU, and a second Ctrl-C
    aborts without saving); what was saved is said once, when the run ends (exit status 130)."""

    def __init__(self, announce: bool = True) -> None:
        self.requested = False
        self.announce = announce
        self._previous = None

    def __enter__(self) -> "_StopFlag":
        def handler(signum, frame):  # noqa: ARG001
            if self.requested:  # second Ctrl-C: give up immediately
                raise KeyboardInterrupt
            self.requested = True
            if self.announce:
                print("\nCtrl-C: stopping after this step to save a checkpoint (press Ctrl-C again to abort "
                      "without saving)", file=sys.stderr)

        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not in the main thread
            self._previous = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def evaluates_after(epoch_index: int, every: int) -> bool:
    """The released schedule: evaluate after the epoch of 0-based index e when e % every == 0
    (so after the first epoch, and after the 751st with the default 750); 0 means never."""
    return every > 0 and epoch_index % every == 0


def _announce_evaluation(args: Any, category: str, test_set: TestDataset, start_epoch: int, n_channels: int,
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
        width = n_channels / (128 if args.mode == "rgbd" else 64)
        tflop = (args.diffusion_num_steps - 2) * 366.5e-3 * (args.img_size / 256) ** 2 * width ** 2
        line += (f"); on a CPU each image costs {tflop:.2g} TFLOP, about 1-2 min per image at 256 px "
                 f"on 2 cores; --eval-epoch-num 0 turns it off")
    else:
        line += "; 0 turns it off)"
    log(line)


class _CategoryTrainer:
    """One category's training run: the state, the loop, the checkpoints, the logs."""

    def __init__(self, args: Any, category: str, device: torch.device, paths: RunPaths, dist: Dist) -> None:
        self.args, self.category, self.device, self.paths, self.dist = args, category, device, paths, dist
        self.progress = not args.quiet and dist.is_main
        self.log = print if dist.is_main else (lambda *a, **k: None)
        self.runtime = runtime_options(args)
        cfg = unet_config(args)
        if dist.is_main:
            print(scan_category(args.dataset, args.data_path, category).line())
        self.data: TrainingData = training_data(args, category, paths, dist)
        self.test_set = None
        if args.eval_epoch_num > 0 and find_test_samples(args.dataset, args.data_path, category):
            self.test_set = TestDataset(args.dataset, args.data_path, category, args.mode, args.img_size,
                                        depth_norm=self.data.depth_norm)
        torch.manual_seed(args.seed)  # the same initial weights on every rank
        net = self.runtime.place(TransFusionUNet(cfg), device)
        opt = torch.optim.AdamW(net.parameters(), lr=args.lr)
        # t and rotation draws: rank 0 uses the seed itself, so one process matches plain training
        self.state = TrainState(net, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=args.step_size,
                                                                          gamma=args.gamma),
                                self.runtime.grad_scaler(device), torch.Generator().manual_seed(args.seed + dist.rank))
        self.meta = build_meta(cfg, args, 0, self.data.depth_norm)
        self.meta["fg_masks"] = fg_mask_record(args, self.data.fg)
        if self.data.holdout:
            self.meta["holdout"] = self.data.holdout
        if args.resume:
            check_same_holdout(paths, category, self.data.holdout)
        self.bad_in_a_row = 0
        self.last_metrics: dict[str, Any] | None = None
        self.writer: SummaryWriter | None = None

    def resume(self) -> None:
        cat, paths = self.category, self.paths
        if self.state.resume(paths, cat, self.dist, self.log):
            s = self.state
            self.log(f"[{cat}] resuming at epoch {s.epoch + 1}" + (f", batch {s.batch + 1}" if s.batch else ""))
            self._repair_weights()
        elif paths.has_weights(cat):
            # starting afresh would replace weights that --resume was asked to continue
            raise TransFusionError(
                f"--resume: {paths.weights(cat)} has no readable training state in {paths.models} to continue "
                f"from (released weights, or the states were removed or are damaged); start again with "
                f"--overwrite (the weights move to {paths.root}/replaced-<time>/) or test them with -c test")
        else:
            self.log(f"[{cat}] --resume: no saved training state in {paths.models}, starting afresh")

    def _repair_weights(self) -> None:
        """Rewrite damaged or missing weights from the training state just loaded (rank 0): a run that
        is already complete would otherwise keep them damaged."""
        path = self.paths.weights(self.category)
        if not self.dist.is_main:
            return
        if path.exists():
            try:
                load_state_dict_file(path)
                return
            except CheckpointError:
                pass
        save_released(self.state.net, path)
        self.log(f"[{self.category}] {path} was damaged or missing: rewritten from the training state "
                 f"(epoch {self.state.epoch}, batch {self.state.batch})")

    def _networks(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(what the training step calls, what evaluation calls): DDP-wrapped and/or compiled."""
        net, trained = self.state.net, self.state.net
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            dev = self.device
            trained = DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
        forward = self.runtime.callable(trained)
        return forward, (self.runtime.callable(net) if self.dist.enabled else forward)

    def _step(self, forward: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossTerms | None:
        """One optimisation step; None when the loss was non-finite on any rank (step skipped)."""
        s, dev, process = self.state, self.device, self.data.process
        ti = make_training_input(process, batch["image"].to(dev), batch["eps"].to(dev), batch["mask"].to(dev),
                                 batch["mask_c"].to(dev), s.generator)
        with self.runtime.autocast(dev):
            eps_hat, x0_hat, logits = forward(torch.cat((ti.x_t, ti.mask_c), 1), ti.t)
        terms = transfusion_loss(process, ti.x_t, ti.t, ti.x0, ti.eps, ti.mask,
                                 eps_hat.float(), x0_hat.float(), logits.float())
        if any_rank(self.dist, not bool(torch.isfinite(terms.total)), dev):
            # every rank skips together, or DDP's gradient all-reduce would hang
            self._bad_step(terms)
            return None
        self.bad_in_a_row = 0
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(terms.total).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
        return terms

    def _bad_step(self, terms: LossTerms) -> None:
        self.bad_in_a_row += 1
        self.log(f"[{self.category}] warning: non-finite loss at epoch {self.state.epoch + 1}, batch "
                 f"{self.state.batch + 1} ({terms.as_dict()}); step skipped")
        if self.bad_in_a_row >= MAX_BAD_STEPS:
            raise TransFusionError(
                f"{MAX_BAD_STEPS} non-finite losses in a row in category {self.category}: stopped; the last "
                f"good checkpoint is in {self.paths.models} (try a lower --lr, then --resume)")
        self.state.optimizer.zero_grad(set_to_none=True)

    def _epoch(self, forward: torch.nn.Module, stop: _StopFlag) -> dict[str, float] | None:
        """The rest of epoch ``state.epoch``: mean loss terms, or None when stopped by Ctrl-C."""
        s, loader = self.state, self.data.loader
        loader.batch_sampler.set_epoch(s.epoch, start_batch=s.batch)
        s.net.train()
        sums: dict[str, float] = {}
        n_done = 0
        bar = tqdm(loader, desc=f"[{self.category}] epoch {s.epoch + 1}/{self.args.epoch_num}",
                   disable=not self.progress, leave=False, unit="batch", total=len(loader) - s.batch)
        for batch in bar:
            terms = self._step(forward, batch)
            s.batch += 1
            if terms is not None:
                n_done += 1
                for k, v in terms.as_dict().items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{terms.total.item():.4f}")
            if terms is not None and any_rank(self.dist, stop.requested, self.device):
                sync_buffers(s.net, self.dist)
                self.meta.update(epoch=s.epoch)
                s.save(self.paths, self.category, self.args.keep_last, self.meta, self.dist)
                return None  # run_train says what was saved, once
        return {k: v / max(1, n_done) for k, v in sums.items()}

    def _end_of_epoch(self, losses: dict[str, float], evaluator: torch.nn.Module) -> None:
        s, args = self.state, self.args
        epoch_index = s.epoch
        s.epoch, s.batch = s.epoch + 1, 0
        sync_buffers(s.net, self.dist)
        s.scheduler.step()
        if self.writer:
            for k, v in losses.items():
                self.writer.add_scalar(f"loss/{k}", v, s.epoch)
            self.writer.add_scalar("lr", s.optimizer.param_groups[0]["lr"], s.epoch)
        if self.progress and losses:
            tqdm.write(f"[{self.category}] epoch {s.epoch}: loss {losses['total']:.4f}")
        self.meta.update(epoch=s.epoch)
        if s.epoch % args.save_every == 0 or s.epoch == args.epoch_num:
            s.save(self.paths, self.category, args.keep_last, self.meta, self.dist)
        if self.test_set is not None and evaluates_after(epoch_index, args.eval_epoch_num):
            self._evaluate(evaluator)

    def _evaluate(self, evaluator: torch.nn.Module) -> None:
        settings = EvalSettings(scoring=scoring_options(self.args), runtime=self.runtime,
                                batch_size=self.args.eval_bs, workers=0)
        out = evaluate(evaluator, self.data.process, self.test_set, self.device, settings, dist=self.dist,
                       progress=self.progress, desc=f"[{self.category}] evaluate")
        self.last_metrics = out.metrics
        if self.writer:
            for k, v in out.metrics.items():
                if isinstance(v, float):
                    self.writer.add_scalar(f"eval/{k}", v, self.state.epoch)
        if self.dist.is_main:
            tqdm.write(f"[{self.category}] epoch {self.state.epoch}: image AUROC "
                       f"{fmt_pct(out.metrics['image_auroc'])}, AUPRO {fmt_pct(out.metrics['aupro'])}")

    def run(self) -> TrainOutcome:
        s, args = self.state, self.args
        if s.epoch >= args.epoch_num:
            self.log(f"[{self.category}] already trained for {s.epoch} epochs (--epoch-num {args.epoch_num})")
            return TrainOutcome(self.category, s.epoch, 0.0, None)
        if self.test_set is not None:
            _announce_evaluation(args, self.category, self.test_set, s.epoch, s.net.cfg.n_channels,
                                 self.device, self.log)
        forward, evaluator = self._networks()
        self.writer = SummaryWriter(str(self.paths.tensorboard(self.category))) if self.dist.is_main else None
        t0 = time.perf_counter()
        try:
            with _StopFlag(announce=self.dist.is_main) as stop:
                while s.epoch < args.epoch_num:
                    losses = self._epoch(forward, stop)
                    if losses is None:
                        return TrainOutcome(self.category, s.epoch, time.perf_counter() - t0, self.last_metrics,
                                            True, s.net)
                    self._end_of_epoch(losses, evaluator)
        finally:
            if self.writer:
                self.writer.close()
        return TrainOutcome(self.category, args.epoch_num, time.perf_counter() - t0, self.last_metrics, model=s.net)


def train_category(args: Any, category: str, device: torch.device, paths: RunPaths,
                   dist: Dist = SINGLE) -> TrainOutcome:
    """Train one category; with ``dist`` enabled, as one rank of DistributedDataParallel."""
    trainer = _CategoryTrainer(args, category, device, paths, dist)
    if args.resume:
        trainer.resume()
    return trainer.run()


def _agree(dist: Dist, problem: str | None) -> None:
    """Every rank raises when any rank has a problem (a collective, so none waits at a barrier)."""
    problems = [p for p in dict.fromkeys(gather_objects(dist, problem)) if p]
    if problems:
        raise TransFusionError("; ".join(problems))


def _start_up_checks(args: Any, paths: RunPaths) -> None:
    """Rank 0, before anything is trained: a writable run folder with room, the textures."""
    from utils.preflight import check_run_folder, checkpoint_bytes, parameter_count
    from utils.training_setup import texture_source

    check_run_folder(paths, checkpoint_bytes(parameter_count(args), args.keep_last))
    if has_rgb(args.mode):
        texture_source(args, announce=True)  # validates --dtd-path now, says what is used


@contextmanager
def _owned(args: Any, paths: RunPaths, categories: list[str], mine: list[str], dist: Dist,
           own_locks: bool) -> Iterator[None]:
    """The categories this process trains are its own while it trains them.

    The rank that trains a category holds its ``<run>/models/<category>.train.lock`` (rank 0
    when all ranks share every category, each rank its own with ``own_locks``); then rank 0
    refuses to replace trained weights without --resume/--overwrite, and --overwrite moves the
    old files aside. A refusal on any rank stops every rank."""
    takes_locks = own_locks or dist.is_main
    with ExitStack() as locks:
        problem = None
        try:
            if dist.is_main:
                _start_up_checks(args, paths)
            if takes_locks:
                for cat in mine:
                    locks.enter_context(held(paths.train_lock(cat), f"-c train -r {args.run_name} --category {cat}"))
        except TransFusionError as exc:
            problem = str(exc)
        _agree(dist, problem)
        # every lock is held now (by this rank or its peers): nobody else can add weights meanwhile
        _agree(dist, start_refusal(paths, categories, args.resume, args.overwrite) if dist.is_main else None)
        if args.overwrite:
            stamp = gather_objects(dist, replaced_stamp(paths) if dist.is_main else None)[0]
            _agree(dist, _move_aside(paths, mine if takes_locks else [], stamp))
        barrier(dist)
        yield


def _move_aside(paths: RunPaths, categories: list[str], stamp: str) -> str | None:
    """--overwrite: each category's old files to ``replaced-<stamp>/``; why not, or None."""
    try:
        for cat in categories:
            if move_aside(paths, cat, stamp):
                print(f"[{cat}] --overwrite: the previous weights, meta, training states, results, logs and calibration "
                      f"moved to {paths.replaced(stamp) / cat}")
    except TransFusionError as exc:
        return str(exc)
    return None


def _train_each(args: Any, categories: list[str], device: torch.device, paths: RunPaths, dist: Dist,
                per_category: Dist) -> dict[str, TrainOutcome]:
    """Train the categories in turn; stop at the first one interrupted by Ctrl-C."""
    speaks = dist.is_main or per_category is SINGLE
    if speaks:
        where = f"{device}" + (f", {dist.world_size} processes" if dist.enabled else "")
        print(f"training {len(categories)} categor{'y' if len(categories) == 1 else 'ies'} on {where}: "
              f"{', '.join(categories) or '-'}; run folder {paths.root}")
    outcomes = {}
    for cat in categories:
        outcomes[cat] = outcome = train_category(args, cat, device, paths, per_category)
        if outcome.interrupted:
            break
        if speaks:
            print(f"[{cat}] trained {outcome.epochs_done} epochs in {outcome.seconds / 60:.1f} min; "
                  f"weights: {paths.weights(cat)}")
    return outcomes


def run_train(args: Any, categories: list[str] | None = None) -> dict[str, TrainOutcome]:
    """``-c train``: every category of ``--category`` (or the given list) in turn; under torchrun
    all ranks share each category, or with --split-categories each rank trains its own.

    Raises `Interrupted` after Ctrl-C saved a checkpoint (the command line exits with 130)."""
    from data.discovery import resolve_categories
    from utils.distributed import init_distributed, shutdown
    from utils.preflight import dry_run
    from utils.training_setup import texture_source

    dist, device = init_distributed(args.device)
    try:
        if args.dry_run:
            if dist.is_main:
                dry_run(args, device)
            return {}
        paths = RunPaths(args.log_path, args.run_name)
        if categories is None:
            categories = resolve_categories(args.dataset, args.data_path, args.category)
        if args.preview_synthesis:
            if dist.is_main:
                from utils.synthesis_preview import run_preview

                if has_rgb(args.mode):
                    texture_source(args, announce=True)
                run_preview(args, categories, paths)
            return {}
        per_category, mine = dist, categories
        if dist.enabled and args.split_categories:
            mine, per_category = categories[dist.rank::dist.world_size], SINGLE
        with _owned(args, paths, categories, mine, dist, own_locks=per_category is SINGLE):
            outcomes = _train_each(args, mine, device, paths, dist, per_category)
            barrier(dist)
        stopped = [o for o in outcomes.values() if o.interrupted]
        if stopped:
            cat = stopped[0].category
            saved = (paths.train_states(cat) or [paths.models])[-1]
            raise Interrupted(f"[{cat}] checkpoint saved: {saved}; continue with -c train -r {args.run_name} "
                              f"--category {args.category} --resume" if dist.is_main or per_category is SINGLE else "")
        return outcomes
    finally:
        shutdown(dist)
