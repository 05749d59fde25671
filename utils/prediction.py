"""``-c predict``: score new, unlabelled images with a trained run.

Writes per image a heat-map picture and one line of ``predictions.jsonl`` (path, score,
decision), and ``report.html`` over all of them; the decision uses ``--threshold``, else the
threshold ``-c calibrate`` stored (defect when score > it), else the F1-max threshold of
``-c test`` (defect when score >= it), and is left out (scores only) when none exists; the run
says which one decides and where it came from (utils/thresholds.py). Unreadable inputs are
reported and skipped; the rest are still scored.
"""
from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

from data.catalog import IMAGE_EXTENSIONS
from data.datasets import model_input
from models.modes import has_depth
from models.runtime import RuntimeOptions
from models.scoring import AnomalyMaps, ScoringOptions, score_batch
from models.transparency import TransparencyProcess
from utils.atomic import atomic_write_text
from utils.config import runtime_options, scoring_options
from utils.errors import TransFusionError
from utils.report_html import THUMB_SIDE, CategoryPage, ImageRow, ThresholdLine, thumbnail_uris, write_category_report
from utils.runs import RunPaths, load_network
from utils.testing import checked_process
from utils.thresholds import Threshold, choose_threshold, schedule_note


def collect_inputs(spec: str) -> list[Path]:
    """An image file, a folder (its images, sorted) or a glob pattern."""
    p = Path(spec).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise TransFusionError(f"--input folder {p} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return files
    matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
    if not matches:
        raise TransFusionError(f"--input {spec} is neither an image, a folder nor a glob that matches files")
    return matches


def pick_category(paths: RunPaths, category: str) -> str:
    """``--category``, or the run's only category when it is 'all'."""
    if category != "all":
        return category
    found = sorted(p.name[: -len("_model.pkl")] for p in paths.models.glob("*_model.pkl"))
    if len(found) == 1:
        return found[0]
    raise TransFusionError(f"this command needs --category: {paths.models} holds "
                           f"{', '.join(found) if found else 'no models'}")


def scored_batches(net: torch.nn.Module, process: TransparencyProcess, files: list[Path], mode: str, size: int,
                   depth_norm: tuple[float, float] | None, scoring: ScoringOptions, runtime: RuntimeOptions,
                   device: torch.device, batch_size: int, keep_reconstruction: bool = False,
                   progress: bool = True, desc: str = "predict", on_skip: Callable[[Exception], None] = print
                   ) -> Iterator[tuple[list[Path], torch.Tensor, AnomalyMaps, torch.Tensor | None]]:
    """Read and score image files in batches: (paths, network inputs, maps, reconstructions or None).
    Unreadable files are handed to ``on_skip`` and left out; a non-finite map is an error."""
    batch_paths: list[Path] = []
    batch_images: list[torch.Tensor] = []

    def scored() -> tuple[list[Path], torch.Tensor, AnomalyMaps, torch.Tensor | None]:
        images = torch.stack(batch_images).to(device)
        maps, recon = score_batch(runtime.callable(net), process, images, scoring, runtime,
                                  keep_reconstruction=keep_reconstruction)
        for p, score in zip(batch_paths, maps.scores.tolist()):
            if score != score:  # NaN
                raise TransFusionError(f"the anomaly map of {p} is not finite: the checkpoint looks corrupt")
        return list(batch_paths), images, maps, recon

    for p in tqdm(files, desc=desc, disable=not progress, leave=False):
        try:
            batch_images.append(model_input(p, mode, size, depth_norm))
            batch_paths.append(p)
        except TransFusionError as exc:
            on_skip(exc)
            continue
        if len(batch_images) == batch_size:
            yield scored()
            batch_paths.clear()
            batch_images.clear()
    if batch_images:
        yield scored()


def announce_threshold(threshold: Threshold | None, category: str, schedule: dict[str, int | None]) -> None:
    """Say which threshold decides and where it came from (or that there is none)."""
    if threshold is None:
        print(f"note: no --threshold and no stored threshold for {category} (run -c calibrate on good images, "
              f"or -c test to store the F1-max one): printing scores only")
        return
    print(f"decisions: {threshold.describe()}")
    note = schedule_note(threshold, schedule)
    if note:
        print(note)


def _report(out_dir: Path, args: argparse.Namespace, category: str, mode: str, paths: RunPaths,
            threshold: Threshold | None, rows: list[ImageRow], skipped: int, schedule: dict[str, int | None]) -> Path:
    """predictions/<category>/report.html: every scored image, defects first."""
    steps = ", ".join(f"{k} {v}" for k, v in schedule.items() if v is not None) or "all T − 2 reverse steps"
    facts = [("run", args.run_name), ("category", category), ("mode", mode),
             ("checkpoint", str(paths.weights(category))), ("input", str(args.input)),
             ("images", f"{len(rows)} scored, {skipped} skipped"), ("step schedule", steps),
             ("written", time.strftime("%Y-%m-%d %H:%M:%S"))]
    columns = ["input", "depth", "heat map"] if mode == "rgbd" else ["input", "heat map"]
    page = CategoryPage(title=f"{args.run_name} / {category}: predictions", facts=facts, columns=columns, rows=rows,
                        thresholds=[ThresholdLine(threshold, True)] if threshold else [])
    return write_category_report(out_dir, page)


def predict(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """``-c predict``: scores, decisions, heat maps, predictions.jsonl and report.html."""
    from utils.visualize import render_thumbnails, save_panel

    paths = RunPaths(args.log_path, args.run_name)
    category = pick_category(paths, args.category)
    runtime, scoring = runtime_options(args), scoring_options(args)
    net, meta = load_network(paths, category, args.mode, args.unet_channel_num, runtime, device)
    mode = net.cfg.mode
    size = int(meta.get("img_size") or args.img_size)
    depth_norm = tuple(meta["depth_norm"]) if meta.get("depth_norm") else None
    if has_depth(mode) and depth_norm is None:
        raise TransFusionError(f"{paths.meta(category)} has no depth range; run -c test on this run once "
                               f"(it needs the training set) before predicting in mode {mode}")
    threshold = choose_threshold(meta, paths.meta(category), args.threshold)
    announce_threshold(threshold, category, scoring.schedule())
    map_range = tuple(meta.get("map_range") or (0.0, 1.0))  # the test set's, so pictures compare
    process = checked_process(int(meta.get("diffusion_num_steps") or args.diffusion_num_steps), mode,
                              scoring.eval_steps, paths.meta(category))
    out_dir = paths.root / "predictions" / category
    out_dir.mkdir(parents=True, exist_ok=True)

    records: list[dict[str, Any]] = []
    rows: list[ImageRow] = []
    skipped: list[Exception] = []

    def skip(exc: Exception) -> None:
        skipped.append(exc)
        print(f"skipped: {exc}")

    for batch_paths, images, maps, recon in scored_batches(
            net, process, collect_inputs(args.input), mode, size, depth_norm, scoring, runtime, device,
            args.eval_bs, keep_reconstruction=True, progress=not args.quiet, on_skip=skip):
        for i, p in enumerate(batch_paths):
            score = float(maps.scores[i])
            decision = None if threshold is None else threshold.decide(score)
            image, final = images[i].float().cpu().numpy(), maps.final[i].cpu().numpy()
            heat = out_dir / f"{len(records):05d}_{p.stem}.png"
            save_panel(heat, image, final, None, recon[i].float().cpu().numpy(), mode, score=score,
                       title=f"{p.name}: {decision or 'score'}", map_range=map_range)
            thumbs = render_thumbnails(image, final, None, mode, map_range, THUMB_SIDE, with_ground_truth=False)
            rows.append(ImageRow(str(p), f"{p.parent.name}/{p.name}", score, None, decision, thumbnail_uris(thumbs),
                                 int(maps.steps_run[i])))
            records.append({"path": str(p), "score": score, "decision": decision,
                            "threshold": None if threshold is None else threshold.value,
                            "threshold_kind": None if threshold is None else threshold.kind,
                            "steps": int(maps.steps_run[i]), "heatmap": str(heat)})
            print(f"{score:.6f}  {decision or '':6s}  {p}")
    atomic_write_text(out_dir / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    report = _report(out_dir, args, category, mode, paths, threshold, rows, len(skipped), scoring.schedule())
    print(f"{len(records)} image(s) scored, {len(skipped)} skipped; heat maps, predictions.jsonl and {report.name} "
          f"in {out_dir}")
    return records
