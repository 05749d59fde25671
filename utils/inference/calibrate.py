"""``-c calibrate``: a decision threshold from good images that training never saw, with a stated
false-alarm rate (the rule and its guarantee: utils/inference/calibration_rule.py).

The good images come from ``--calib-path FOLDER``, else the layout's ``validation/good`` (with
``-d``; MVTec 3D-AD has one), else the images ``-c train --holdout K`` left out of training
(recorded in the category's meta by file name). The threshold, A, G, n, r and the step
schedule go into the category's meta, where ``-c predict`` finds them; the scores go to
``<run>/calibration/<category>/scores.csv`` and the record to ``calibration.json`` there.
"""
from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path
from typing import Any

from data.catalog import IMAGE_EXTENSIONS
from data.discovery import find_train_images, find_validation_images
from utils.core.atomic import atomic_write_json, atomic_write_text
from utils.core.errors import TransFusionError
from utils.inference.calibration_rule import Calibration, calibrate_threshold
from utils.inference.inputs import collect_inputs, open_detector
from utils.machine.distributed import pick_device
from utils.run.meta import category_view, network_for, read_meta, update_category_meta
from utils.run.paths import MULTICLASS, RunPaths
from utils.run.settings import training_depth_range


def _folder_images(spec: str) -> list[Path]:
    """--calib-path: a folder of images (MVTec 3D-AD style: its rgb/ sub-folder), a glob or one file."""
    folder = Path(spec).expanduser()
    if (folder / "rgb").is_dir() and not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir()):
        folder = folder / "rgb"
    return collect_inputs(str(folder))


def _held_out(args: argparse.Namespace, category: str, holdout: dict[str, Any]) -> list[Path]:
    """The held-out training images by name: under -d when given, else in the folder training read."""
    names = list(holdout["files"])
    if args.data_path:
        found = {p.name: p for p in find_train_images(args.dataset, args.data_path, category)}
        where = f"the training images of {category} under {args.data_path}"
    else:
        folder = Path(holdout.get("folder", ""))
        found = {n: folder / n for n in names if (folder / n).is_file()}
        where = str(folder)
    missing = [n for n in names if n not in found]
    if missing:
        raise TransFusionError(f"{len(missing)} of the {len(names)} held-out images are not in {where} (first: "
                               f"{missing[0]}); pass -d with the dataset root the run was trained on, or --calib-path")
    return [found[n] for n in names]


def good_images(args: argparse.Namespace, paths: RunPaths, category: str,
                meta: dict[str, Any]) -> tuple[list[Path], str]:
    """The calibration images and where they come from, in the order of precedence above; for the
    whole union of a multi-class network, those of each of its categories."""
    if args.calib_path:
        return _folder_images(args.calib_path), f"--calib-path {args.calib_path}"
    if category == MULTICLASS:
        union = [str(c) for c in meta.get("categories") or []]
        if not union:
            raise TransFusionError(f"{paths.meta(MULTICLASS)} lists no categories (released weights?): pass "
                                   f"--calib-path FOLDER with good images, or --category C")
        files = [f for c in union for f in _good_images_of(args, paths, c, category_view(meta, c))[0]]
        return files, f"the good images of its {len(union)} categories ({', '.join(union)})"
    return _good_images_of(args, paths, category, meta)


def _good_images_of(args: argparse.Namespace, paths: RunPaths, category: str,
                    meta: dict[str, Any]) -> tuple[list[Path], str]:
    """One category's calibration images: the layout's validation split under -d, else its held-out
    training images."""
    if args.data_path:
        files = find_validation_images(args.dataset, args.data_path, category)
        if files:
            return files, f"{files[0].parent} (validation split)"
    holdout = meta.get("holdout")
    if holdout and holdout.get("files"):
        return _held_out(args, category, holdout), f"the training images -c train --holdout {len(holdout['files'])} " \
                                                   f"left out"
    raise TransFusionError(
        f"-c calibrate needs good images of {category} that training never saw: pass --calib-path FOLDER, or -d "
        f"DATA for a layout with a validation/good split (MVTec 3D-AD), or train with -c train --holdout K "
        f"(none found in {paths.meta(category)})")


def _write_files(folder: Path, scored: list[tuple[Path, float, int]], record: dict[str, Any]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image_path", "score", "steps"])
    for p, s, n in scored:
        w.writerow([str(p), f"{s:.8f}", n])
    atomic_write_text(folder / "scores.csv", buf.getvalue())
    atomic_write_json(folder / "calibration.json", record)


def describe(category: str, cal: Calibration, where: str) -> list[str]:
    """What the calibration reached, in words (the lines -c calibrate prints)."""
    a, g = f"{100 * cal.target_fpr:g} %", f"{100 * cal.confidence:g} %"
    head = f"[{category}] {cal.n} good images from {where}"
    if cal.enough:
        return [f"{head}: threshold {cal.threshold:.6f}, the {cal.r}-th largest score; a new good part is called "
                f"defect (score > threshold) with probability at most {a}, with {100 * cal.confidence_reached:.1f} % "
                f"confidence (asked: {g})"]
    return [f"{head}: too few for a false-alarm rate of at most {a} with {g} confidence, which needs "
            f"n >= ln(1 - G) / ln(1 - A), i.e. {cal.images_needed} good images",
            f"[{category}] stored the largest score {cal.threshold:.6f}: it keeps the false-alarm rate at most {a} "
            f"with only {100 * cal.confidence_reached:.1f} % confidence; {cal.images_needed - cal.n} more good images "
            f"would reach {g}"]


def run_calibrate(args: argparse.Namespace) -> Calibration:
    """``-c calibrate -r RUN --category C --target-fpr A [--confidence G] [--calib-path FOLDER]``."""
    device = pick_device(args.device)
    paths = RunPaths(args.log_path, args.run_name)
    category = paths.pick_category(args.category)
    network, view = network_for(paths, category)
    paths.require_weights(network)
    meta = read_meta(paths, network)
    files, where = good_images(args, paths, view or network, category_view(meta, view))
    union = (meta.get("categories") or [category]) if (view is None and network == MULTICLASS) else [view or category]
    det = open_detector(args, paths, category, device, training_depth_range(args, union))
    for note in det.notes:
        print(note)
    scored: list[tuple[Path, float, int]] = []
    for batch in det.batches(files, progress=not args.quiet, desc=f"[{category}] calibrate",
                             on_skip=lambda exc: print(f"skipped: {exc}")):
        scored += [(Path(p), float(s), int(n)) for p, s, n in zip(batch.names, batch.scores, batch.steps)]
    if not scored:
        raise TransFusionError(f"none of the {len(files)} calibration images of {category} could be read ({where})")
    cal = calibrate_threshold([s for _, s, _ in scored], args.target_fpr, args.confidence)
    folder = paths.calibration(view, of=network) if view else paths.calibration(network)
    record = {**cal.as_dict(), "schedule": det.scoring.schedule(), "images_from": where,
              "scores_file": str(folder / "scores.csv"), "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    _write_files(folder, scored, record)
    update_category_meta(paths, network, view or network, calibration=record)
    for line in describe(category, cal, where):
        print(line)
    also = f" --category {view}" if view else ""
    print(f"[{category}] stored in {paths.meta(network)}; -c predict{also} now decides with it "
          f"(scores: {folder / 'scores.csv'})")
    return cal
