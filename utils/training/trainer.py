"""Training one category (docs/method.md §5): AdamW + StepLR, half-batch synthesis, the four losses.

A run can be killed at any moment and continued with ``--resume``: the training state
(utils/training/state.py) is saved atomically every ``--save-every`` epochs, on Ctrl-C and at the
end, and the data order and synthesis of every batch depend only on (seed, epoch, batch), so a
resumed run continues the very sequence an uninterrupted one would have followed.
"""
from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from data.datasets import TestDataset
from data.discovery import find_test_samples, scan_category
from data.textures import TextureSource
from models.checkpoint import CheckpointError, load_state_dict_file
from models.conditioning import ClassConditionedUNet, OneCategory
from models.losses import LossTerms, transfusion_loss
from models.transparency import TransparencyProcess, make_training_input
from models.unet import TransFusionUNet, UNetConfig
from utils.core.errors import TransFusionError
from utils.evaluation.loop import EvalSettings, evaluate
from utils.machine.distributed import SINGLE, Dist, any_rank, sync_buffers
from utils.reports.output_csv import AVERAGE_ROW, append_output_csv
from utils.reports.tables import avg_line, fmt_pct, mean_metrics
from utils.run.meta import build_meta
from utils.run.network import save_network
from utils.run.paths import RunPaths
from utils.run.settings import Requested, resolve_settings, runtime_options, scoring_options, unet_config
from utils.training.feed import TrainingData, check_same_holdout, fg_mask_record, training_data
from utils.training.state import TrainState

MAX_BAD_STEPS = 5  # consecutive non-finite losses before the run stops


@dataclass(frozen=True)
class EpochTime:
    """Where one epoch's time went: ``seconds`` of training steps, ``data_wait`` of them spent
    blocked on the loader for the next batch, ``samples`` trained on (this rank's)."""

    seconds: float
    data_wait: float
    samples: int


@dataclass
class TrainOutcome:
    category: str
    epochs_done: int
    seconds: float
    last_metrics: dict[str, Any] | None
    interrupted: bool = False
    model: torch.nn.Module | None = None  # the trained network (unwrapped)
    epoch_times: list[EpochTime] = field(default_factory=list)  # the epochs this run trained, in order

    @property
    def data_wait_share(self) -> float | None:
        """The share of the training steps' time spent waiting for data (None: nothing trained)."""
        total = sum(e.seconds for e in self.epoch_times)
        return sum(e.data_wait for e in self.epoch_times) / total if total > 0 else None


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


def _announce_evaluation(args: Any, category: str, n_images: int, start_epoch: int, cfg: UNetConfig,
                         device: torch.device, log: Any) -> None:
    """Say when the test set will be evaluated during training, and what that costs."""
    from utils.training.preflight import forward_gflop

    epochs = [e + 1 for e in range(start_epoch, args.epoch_num) if evaluates_after(e, args.eval_epoch_num)]
    if not epochs:
        return
    shown = ", ".join(str(e) for e in epochs[:4]) + (f", ... ({len(epochs)} in all)" if len(epochs) > 4 else "")
    line = (f"[{category}] evaluating the {n_images} test images after epoch{'s' if len(epochs) > 1 else ''} "
            f"{shown} (--eval-epoch-num {args.eval_epoch_num}")
    if device.type == "cpu":
        steps = len(TransparencyProcess(args.diffusion_num_steps).schedule(args.eval_steps))
        tflop = steps * forward_gflop(cfg, args.img_size) / 1e3
        line += (f"); each image costs {steps} network calls, {tflop:.2g} TFLOP, slow on a CPU "
                 f"(docs/performance.md); --eval-epoch-num 0 turns it off")
    else:
        line += "; 0 turns it off)"
    log(line)


class _CategoryTrainer:
    """One network's training run: the state, the loop, the checkpoints, the logs. ``category`` is the
    network's key in the run folder: one category, or MULTICLASS with ``categories`` its union."""

    def __init__(self, args: Any, category: str, device: torch.device, paths: RunPaths, dist: Dist,
                 textures: TextureSource | None = None, categories: list[str] | None = None) -> None:
        self.args, self.category, self.device, self.paths, self.dist = args, category, device, paths, dist
        self.categories = categories or [category]
        self.progress = not args.quiet and dist.is_main
        self.log = print if dist.is_main else (lambda *a, **k: None)
        self.runtime = runtime_options(args)
        cfg = unet_config(args)
        if dist.is_main:
            for cat in self.categories:
                print(scan_category(args.dataset, args.data_path, cat).line())
        self.data: TrainingData = training_data(args, category, paths, dist, textures, categories=categories)
        self.meta = self._meta(cfg)
        self.test_sets: dict[str, TestDataset] = {}
        self.eval_with = None
        tested = [c for c in self.categories if find_test_samples(args.dataset, args.data_path, c)]
        if args.eval_epoch_num > 0 and tested:
            # scored as -c test will score the run: the settings resolver on the meta being trained
            self.eval_with = resolve_settings(paths, category, self.meta, cfg, Requested.from_args(args))
            self.test_sets = {c: TestDataset(args.dataset, args.data_path, c, args.mode, self.eval_with.image_size,
                                             depth_norm=self.eval_with.depth_norm) for c in tested}
        torch.manual_seed(args.seed)  # the same initial weights on every rank
        built: torch.nn.Module = TransFusionUNet(cfg)
        if getattr(args, "class_embedding", False):  # rows of zeros: it starts as the unconditioned network
            built = ClassConditionedUNet(built, list(self.data.parts))
        net = self.runtime.place(built, device)
        opt = torch.optim.AdamW(net.parameters(), lr=args.lr)
        # t and rotation draws: rank 0 uses the seed itself, so one process matches plain training
        self.state = TrainState(net, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=args.step_size,
                                                                          gamma=args.gamma),
                                self.runtime.grad_scaler(device), torch.Generator().manual_seed(args.seed + dist.rank))
        if args.resume:
            for cat, part in self.data.parts.items():
                check_same_holdout(paths, category, part.holdout, None if categories is None else cat)
        self.bad_in_a_row = 0
        self.last_metrics: dict[str, Any] | None = None
        self.writer: SummaryWriter | None = None
        self.epoch_times: list[EpochTime] = []

    def _meta(self, cfg: UNetConfig) -> dict[str, Any]:
        """What the meta records: the network and settings; the foreground masks and held-out images
        (for a multi-class network: its categories, and those per category)."""
        meta = build_meta(cfg, self.args, 0, self.data.depth_norm)
        if len(self.categories) == 1 and self.categories[0] == self.category:
            meta["fg_masks"] = fg_mask_record(self.args, self.data.fg)
            if self.data.holdout:
                meta["holdout"] = self.data.holdout
            return meta
        meta["categories"] = list(self.data.parts)
        if getattr(self.args, "class_embedding", False):
            meta["class_embedding"] = {"file": self.paths.class_embedding(self.category).name,
                                       "categories": list(self.data.parts)}
        meta["per_category"] = {
            cat: {"fg_masks": fg_mask_record(self.args, part.fg, texture_rule=False),
                  **({"holdout": part.holdout} if part.holdout else {})}
            for cat, part in self.data.parts.items()}
        return meta

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
        save_network(self.paths, self.category, self.state.net)
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
        classes = (batch["class"].to(dev),) if isinstance(s.net, ClassConditionedUNet) else ()
        with self.runtime.autocast(dev):
            eps_hat, x0_hat, logits = forward(torch.cat((ti.x_t, ti.mask_c), 1), ti.t, *classes)
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
        """The rest of epoch ``state.epoch``: mean loss terms, or None when stopped by Ctrl-C.
        Its time, and the part of it spent waiting for the loader, go to ``epoch_times``."""
        s, loader = self.state, self.data.loader
        loader.batch_sampler.set_epoch(s.epoch, start_batch=s.batch)
        s.net.train()
        sums: dict[str, float] = {}
        n_done = 0
        bar = tqdm(loader, desc=f"[{self.category}] epoch {s.epoch + 1}/{self.args.epoch_num}",
                   disable=not self.progress, leave=False, unit="batch", total=len(loader) - s.batch)
        batches, waited, samples, t0 = iter(bar), 0.0, 0, time.perf_counter()
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - asked
            if batch is None:
                break
            samples += len(batch["image"])
            terms = self._step(forward, batch)
            s.batch += 1
            if terms is not None:
                n_done += 1
                for k, v in terms.as_dict().items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.set_postfix(loss=f"{terms.total.item():.4f}")
            if terms is not None and any_rank(self.dist, stop.requested, self.device):
                self.epoch_times.append(EpochTime(time.perf_counter() - t0, waited, samples))
                sync_buffers(s.net, self.dist)
                self.meta.update(epoch=s.epoch)
                s.save(self.paths, self.category, self.args.keep_last, self.meta, self.dist)
                return None  # run_train says what was saved, once
        self.epoch_times.append(EpochTime(time.perf_counter() - t0, waited, samples))
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
            spent = self.epoch_times[-1]
            if spent.seconds > 0:  # is the device fed? (docs/performance.md, "Training data path")
                self.writer.add_scalar("time/samples_per_s", spent.samples / spent.seconds, s.epoch)
                self.writer.add_scalar("time/data_wait_share", spent.data_wait / spent.seconds, s.epoch)
        if self.progress and losses:
            tqdm.write(f"[{self.category}] epoch {s.epoch}: loss {losses['total']:.4f}")
        self.meta.update(epoch=s.epoch)
        if s.epoch % args.save_every == 0 or s.epoch == args.epoch_num:
            s.save(self.paths, self.category, args.keep_last, self.meta, self.dist)
        if self.test_sets and evaluates_after(epoch_index, args.eval_epoch_num):
            self._evaluate(evaluator)

    def _evaluate(self, evaluator: torch.nn.Module) -> None:
        """Every test set of the network; a multi-class network's per-category rows and their
        Average go to output.csv (docs/method.md §10), its mean to TensorBoard as eval/<metric>."""
        assert self.eval_with is not None
        settings = EvalSettings(scoring=scoring_options(self.args), runtime=self.runtime,
                                batch_size=self.args.eval_bs, workers=0)
        rows = {}
        conditioned = isinstance(self.state.net, ClassConditionedUNet)
        for cat, test_set in self.test_sets.items():
            net = OneCategory(evaluator, self.state.net.index(cat)) if conditioned else evaluator
            out = evaluate(net, self.eval_with.process, test_set, self.device, settings, dist=self.dist,
                           progress=self.progress, desc=f"[{cat}] evaluate")
            rows[cat] = out.metrics
            if self.dist.is_main:
                tqdm.write(f"[{cat}] epoch {self.state.epoch}: image AUROC {fmt_pct(out.metrics['image_auroc'])}, "
                           f"AUPRO {fmt_pct(out.metrics['aupro'])}")
        multi = self.categories != [self.category]
        self.last_metrics = mean_metrics(rows) if multi else rows[self.category]
        if self.writer:
            for cat, metrics in rows.items():
                for k, v in metrics.items():
                    if isinstance(v, float):
                        self.writer.add_scalar(f"eval/{cat}/{k}" if multi else f"eval/{k}", v, self.state.epoch)
            for k, v in (self.last_metrics.items() if multi else ()):
                if isinstance(v, float):
                    self.writer.add_scalar(f"eval/{k}", v, self.state.epoch)
        if multi and self.dist.is_main:
            for cat, metrics in {**rows, AVERAGE_ROW: self.last_metrics}.items():
                append_output_csv(self.paths.output_csv, self.args.run_name, cat, self.state.epoch, metrics,
                                  network=self.category)
            tqdm.write(f"[{self.category}] epoch {self.state.epoch}: {avg_line(rows)}")

    def run(self) -> TrainOutcome:
        s, args = self.state, self.args
        if s.epoch >= args.epoch_num:
            self.log(f"[{self.category}] already trained for {s.epoch} epochs (--epoch-num {args.epoch_num})")
            return TrainOutcome(self.category, s.epoch, 0.0, None)
        if self.test_sets:
            _announce_evaluation(args, self.category, sum(len(t) for t in self.test_sets.values()), s.epoch,
                                 s.net.cfg, self.device, self.log)
        forward, evaluator = self._networks()
        self.writer = SummaryWriter(str(self.paths.tensorboard(self.category))) if self.dist.is_main else None
        t0 = time.perf_counter()
        try:
            with _StopFlag(announce=self.dist.is_main) as stop:
                while s.epoch < args.epoch_num:
                    losses = self._epoch(forward, stop)
                    if losses is None:
                        return TrainOutcome(self.category, s.epoch, time.perf_counter() - t0, self.last_metrics,
                                            True, s.net, self.epoch_times)
                    self._end_of_epoch(losses, evaluator)
        finally:
            if self.writer:
                self.writer.close()
        return TrainOutcome(self.category, args.epoch_num, time.perf_counter() - t0, self.last_metrics, model=s.net,
                            epoch_times=self.epoch_times)


def train_category(args: Any, category: str, device: torch.device, paths: RunPaths,
                   dist: Dist = SINGLE, textures: TextureSource | None = None,
                   categories: list[str] | None = None) -> TrainOutcome:
    """Train one category (or, with ``categories``, one multi-class network on their union under the
    key ``category``); with ``dist`` enabled, as one rank of DistributedDataParallel. ``textures``:
    the run's texture source, shared by its categories (else made for this one)."""
    trainer = _CategoryTrainer(args, category, device, paths, dist, textures, categories)
    if args.resume:
        trainer.resume()
    return trainer.run()
