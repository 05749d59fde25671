"""``-c train``: every category of ``--category`` in turn, owned while it trains (its lock, the
refusal to replace trained weights without --resume or --overwrite), under torchrun shared by
all ranks or split among them (--split-categories). Every category's files are checked before
the first is trained (utils/training/preflight.py): a broken one refuses the run, naming all,
unless --skip-broken. One category's loop: utils/training/trainer.py.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import torch

from models.modes import has_rgb
from utils.core.errors import Interrupted, TransFusionError
from utils.machine.distributed import SINGLE, Dist, barrier, gather_objects, raise_together
from utils.run.locks import held
from utils.run.ownership import move_aside, replaced_stamp, start_refusal
from utils.run.paths import MULTICLASS, RunPaths
from utils.training.trainer import TrainOutcome, train_category


def _start_up_checks(args: Any, paths: RunPaths) -> None:
    """Rank 0, before anything is trained: a writable run folder with room, the textures."""
    from utils.training.feed import texture_source
    from utils.training.preflight import check_run_folder, checkpoint_bytes, parameter_count

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
        raise_together(dist, problem)
        # every lock is held now (by this rank or its peers): nobody else can add weights meanwhile
        raise_together(dist, start_refusal(paths, categories, args.resume, args.overwrite) if dist.is_main else None)
        if args.overwrite:
            stamp = gather_objects(dist, replaced_stamp(paths) if dist.is_main else None)[0]
            raise_together(dist, _move_aside(paths, mine if takes_locks else [], stamp))
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
    from utils.training.feed import texture_source

    speaks = dist.is_main or per_category is SINGLE
    if speaks:
        where = f"{device}" + (f", {dist.world_size} processes" if dist.enabled else "")
        print(f"training {len(categories)} categor{'y' if len(categories) == 1 else 'ies'} on {where} "
              f"({args.workers} DataLoader worker{'' if args.workers == 1 else 's'}{' each' if dist.enabled else ''}): "
              f"{', '.join(categories) or '-'}; run folder {paths.root}")
    textures = texture_source(args, announce=False) if has_rgb(args.mode) and categories else None  # one per run
    outcomes = {}
    for cat in categories:
        outcomes[cat] = outcome = train_category(args, cat, device, paths, per_category, textures)
        if outcome.interrupted:
            break
        if speaks:
            share = outcome.data_wait_share
            waited = "" if share is None else f" ({share:.0%} of it waiting for data)"
            print(f"[{cat}] trained {outcome.epochs_done} epochs in {outcome.seconds / 60:.1f} min{waited}; "
                  f"weights: {paths.weights(cat)}")
    return outcomes


def _trainable(args: Any, categories: list[str], dist: Dist) -> tuple[list[str], dict[str, str]]:
    """The categories whose files all open, checked by rank 0 before anything is trained, and the
    broken ones with why; every rank gets rank 0's verdict, so all refuse or all go on together.
    A broken category refuses the whole run unless --skip-broken."""
    from utils.training.preflight import broken_refusal, check_categories

    verdict = check_categories(args, categories, progress=not args.quiet)[1] if dist.is_main else None
    broken: dict[str, str] = gather_objects(dist, verdict)[0]
    if broken and (not args.skip_broken or len(broken) == len(categories)):
        raise TransFusionError(broken_refusal(broken, len(categories)))
    return [c for c in categories if c not in broken], broken


def _say_skipped(broken: dict[str, str]) -> None:
    print(f"skipped {len(broken)} broken categor{'y' if len(broken) == 1 else 'ies'} (--skip-broken): "
          + "; ".join(f"{cat}: {why}" for cat, why in broken.items()))


def run_train(args: Any, categories: list[str] | None = None) -> dict[str, TrainOutcome]:
    """``-c train``: every category of ``--category`` (or the given list) in turn; under torchrun
    all ranks share each category, or with --split-categories each rank trains its own.

    Raises `Interrupted` after Ctrl-C saved a checkpoint (the command line exits with 130)."""
    from data.discovery import resolve_categories
    from utils.machine.distributed import init_distributed, shutdown
    from utils.training.feed import texture_source
    from utils.training.preflight import dry_run

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
                from utils.training.preview import run_preview

                if has_rgb(args.mode):
                    texture_source(args, announce=True)
                run_preview(args, categories, paths)
            return {}
        categories, broken = _trainable(args, categories, dist)
        if broken and dist.is_main:
            _say_skipped(broken)
        per_category, mine = dist, categories
        if dist.enabled and args.split_categories:
            mine, per_category = categories[dist.rank::dist.world_size], SINGLE
        with _owned(args, paths, categories, mine, dist, own_locks=per_category is SINGLE):
            outcomes = _train_each(args, mine, device, paths, dist, per_category)
            barrier(dist)
        if broken and dist.is_main:
            _say_skipped(broken)  # again at the end, where it is read
        stopped = [o for o in outcomes.values() if o.interrupted]
        if stopped:
            cat = stopped[0].category
            saved = (paths.train_states(cat) or [paths.models])[-1]
            raise Interrupted(f"[{cat}] checkpoint saved: {saved}; continue with -c train -r {args.run_name} "
                              f"--category {args.category} --resume" if dist.is_main or per_category is SINGLE else "")
        return outcomes
    finally:
        shutdown(dist)


def union_categories(args: Any) -> list[str]:
    """-c train_multiclass's categories: every category folder under -d (the original's glob ``*``),
    or those --category names (a comma-separated list)."""
    from data.discovery import present_categories, resolve_categories

    if args.category == "all":
        return present_categories(args.dataset, args.data_path)
    return resolve_categories(args.dataset, args.data_path, args.category)


def run_train_multiclass(args: Any) -> dict[str, TrainOutcome]:
    """``-c train_multiclass``: one network on the union of the categories (docs/method.md §10), saved
    as ``models/*_model.pkl``; every other file of it is keyed "multiclass". Under torchrun every
    rank shares the union's batches (DistributedDataParallel).

    Raises `Interrupted` after Ctrl-C saved a checkpoint (the command line exits with 130)."""
    from utils.machine.distributed import init_distributed, shutdown
    from utils.training.feed import texture_source
    from utils.training.preflight import dry_run

    dist, device = init_distributed(args.device)
    try:
        categories = union_categories(args)
        if dist.is_main:
            print(f"-c train_multiclass: one network for the {len(categories)} categor"
                  f"{'y' if len(categories) == 1 else 'ies'} under {args.data_path}: {', '.join(categories)}")
        if args.dry_run:
            if dist.is_main:
                dry_run(args, device, categories, multiclass=True)
            return {}
        paths = RunPaths(args.log_path, args.run_name)
        if args.preview_synthesis:
            if dist.is_main:
                from utils.training.preview import run_preview

                if has_rgb(args.mode):
                    texture_source(args, announce=True)
                run_preview(args, [MULTICLASS], paths, union=categories)
            return {}
        _trainable(args, categories, dist)  # every category's files open, or one line naming the broken ones
        with _owned(args, paths, [MULTICLASS], [MULTICLASS], dist, own_locks=False):
            outcome = train_category(args, MULTICLASS, device, paths, dist, categories=categories)
            barrier(dist)
        if outcome.interrupted:
            saved = (paths.train_states(MULTICLASS) or [paths.models])[-1]
            raise Interrupted(f"[{MULTICLASS}] checkpoint saved: {saved}; continue with -c train_multiclass -r "
                              f"{args.run_name} --resume" if dist.is_main else "")
        if dist.is_main:
            share = outcome.data_wait_share
            waited = "" if share is None else f" ({share:.0%} of it waiting for data)"
            print(f"[{MULTICLASS}] trained {outcome.epochs_done} epochs in {outcome.seconds / 60:.1f} min{waited}; "
                  f"weights: {paths.weights(MULTICLASS)}")
        return {MULTICLASS: outcome}
    finally:
        shutdown(dist)
