"""``-c predict``: score new, unlabelled images with a trained run.

Each invocation writes into a folder of its own, ``predictions/<category>/<stamp>/`` (its local
start time, made unique), so no earlier prediction is replaced: per image a heat-map picture
and one line of ``predictions.jsonl`` (path, score, decision), ``report.html`` over all of them
and ``summary.json``; ``predictions/<category>/index.html`` lists every invocation (the layout:
utils/run/paths.py). The decision uses ``--threshold``, else the threshold ``-c calibrate`` stored
(defect when score > it), else the F1-max threshold of ``-c test`` (defect when score >= it),
and is left out (scores only) when none exists; the run says which one decides and where it
came from (utils/run/thresholds.py). Unreadable inputs are reported and skipped; the rest are
still scored.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from models.modes import is_two_branch
from utils.core.atomic import atomic_write_json, atomic_write_text
from utils.core.errors import TransFusionError
from utils.core.json_files import BadJsonFile, load_json_file
from utils.inference.detector import Detector
from utils.inference.inputs import collect_inputs, open_detector
from utils.reports.html import (
    THUMB_SIDE,
    CategoryPage,
    ImageRow,
    PredictionEntry,
    ThresholdLine,
    render_prediction_index,
    thumbnail_uris,
    write_category_report,
)
from utils.run.meta_schema import is_int
from utils.run.paths import RunPaths
from utils.run.thresholds import Threshold, schedule_note


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


def _report(out_dir: Path, args: argparse.Namespace, category: str, det: Detector, rows: list[ImageRow],
            skipped: int) -> Path:
    """predictions/<category>/report.html: every scored image, defects first."""
    mode, threshold = det.mode, det.threshold
    steps = ", ".join(f"{k} {v}" for k, v in det.scoring.schedule().items() if v is not None) or \
        "all T − 2 reverse steps"
    facts = [("run", args.run_name), ("category", category), ("mode", mode),
             ("checkpoint", str(det.network_file)), ("input", str(args.input)),
             ("images", f"{len(rows)} scored, {skipped} skipped"), ("step schedule", steps),
             ("written", time.strftime("%Y-%m-%d %H:%M:%S"))]
    if det.backend != "torch":
        facts.insert(4, ("backend", f"{det.backend} (the network exported by -c export)"))
    columns = ["input", "depth", "heat map"] if is_two_branch(mode) else ["input", "heat map"]
    page = CategoryPage(title=f"{args.run_name} / {category}: predictions", facts=facts, columns=columns, rows=rows,
                        thresholds=[ThresholdLine(threshold, True)] if threshold else [])
    return write_category_report(out_dir, page)


def _new_folder(paths: RunPaths, category: str) -> tuple[str, Path]:
    """This invocation's own folder: the local time, made unique by creating it (two predicts
    that start in the same second get two folders; names sort in the order they started)."""
    base = time.strftime("%Y%m%d-%H%M%S")
    try:
        paths.predictions(category).mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            stamp = base if n == 1 else f"{base}-{n:03d}"
            try:
                paths.prediction(category, stamp).mkdir()
                return stamp, paths.prediction(category, stamp)
            except FileExistsError:
                continue
    except OSError as exc:
        raise TransFusionError(f"cannot create a folder in {paths.predictions(category)} ({exc.strerror or exc}); "
                               f"choose another --log-path or free some space") from None
    raise TransFusionError(f"{paths.predictions(category)} already holds 999 predictions started at {base}; "
                           f"try again in a second")


def _entry(folder: Path) -> PredictionEntry | None:
    """One invocation's line of the index, from its summary.json (None: unreadable, left out)."""
    try:
        s = load_json_file(folder / "summary.json")
    except (OSError, BadJsonFile):
        return None
    if not isinstance(s, dict) or not all(is_int(s.get(k)) for k in ("scored", "skipped")) \
            or not all(isinstance(s.get(k), str) for k in ("written", "input", "decided_by")) \
            or not (s.get("defects") is None or is_int(s["defects"])):
        return None
    return PredictionEntry(folder.name, s["written"], s["input"], s["scored"], s["skipped"], s["defects"],
                           s["decided_by"], f"{folder.name}/report.html")


def write_predictions_index(paths: RunPaths, run_name: str, category: str) -> Path:
    """predictions/<category>/index.html over every invocation folder, newest first."""
    folders = sorted((p for p in paths.predictions(category).iterdir() if p.is_dir()), key=lambda p: p.name,
                     reverse=True)
    entries = [e for e in map(_entry, folders) if e is not None]
    facts = [("run", run_name), ("category", category), ("predictions", str(len(entries))),
             ("written", time.strftime("%Y-%m-%d %H:%M:%S"))]
    path = paths.predictions_index(category)
    atomic_write_text(path, render_prediction_index(f"{run_name} / {category}: every prediction", entries, facts))
    return path


def _write_summary(out_dir: Path, args: argparse.Namespace, records: list[dict[str, Any]], skipped: int,
                   threshold: Threshold | None) -> None:
    defects = None if threshold is None else sum(r["decision"] == "defect" for r in records)
    atomic_write_json(out_dir / "summary.json", {
        "written": time.strftime("%Y-%m-%d %H:%M:%S"), "input": str(args.input), "scored": len(records),
        "skipped": skipped, "defects": defects, "decided_by": threshold.describe() if threshold else "scores only"})


def predict(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """``-c predict``: scores, decisions, heat maps, predictions.jsonl and report.html in a new folder."""
    from utils.reports.figures import render_thumbnails, save_panel

    paths = RunPaths(args.log_path, args.run_name)
    category = paths.pick_category(args.category)
    det = open_detector(args, paths, category, device)
    for note in det.notes:
        print(note)
    mode, threshold = det.mode, det.threshold
    if det.backend != "torch":
        threads = getattr(det.network, "threads", "?")
        print(f"network: {det.network_file} in ONNX Runtime ({threads} intra-op threads)")
    announce_threshold(threshold, category, det.scoring.schedule())
    map_range = tuple(det.meta.get("map_range") or (0.0, 1.0))  # the test set's, so pictures compare
    inputs = collect_inputs(args.input)
    stamp, out_dir = _new_folder(paths, category)

    records: list[dict[str, Any]] = []
    rows: list[ImageRow] = []
    skipped: list[Exception] = []

    def skip(exc: Exception) -> None:
        skipped.append(exc)
        print(f"skipped: {exc}")

    for batch in det.batches(inputs, reconstructions=True, progress=not args.quiet, on_skip=skip):
        assert batch.reconstructions is not None
        for i, name in enumerate(batch.names):
            p, score, steps = Path(name), float(batch.scores[i]), int(batch.steps[i])
            decision = None if batch.decisions is None else batch.decisions[i]
            image, final = batch.inputs[i], batch.maps[i]
            heat = out_dir / f"{len(records):05d}_{p.stem}.png"
            save_panel(heat, image, final, None, batch.reconstructions[i], mode, score=score,
                       title=f"{p.name}: {decision or 'score'}", map_range=map_range)
            thumbs = render_thumbnails(image, final, None, mode, map_range, THUMB_SIDE, with_ground_truth=False)
            rows.append(ImageRow(str(p), f"{p.parent.name}/{p.name}", score, None, decision, thumbnail_uris(thumbs),
                                 steps))
            records.append({"invocation": stamp, "path": str(p), "score": score, "decision": decision,
                            "threshold": None if threshold is None else threshold.value,
                            "threshold_kind": None if threshold is None else threshold.kind,
                            "steps": steps, "heatmap": str(heat)})
            print(f"{score:.6f}  {decision or '':6s}  {p}")
    atomic_write_text(out_dir / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    report = _report(out_dir, args, category, det, rows, len(skipped))
    _write_summary(out_dir, args, records, len(skipped), threshold)
    index = write_predictions_index(paths, args.run_name, category)
    print(f"{len(records)} image(s) scored, {len(skipped)} skipped; heat maps, predictions.jsonl and {report.name} "
          f"in {out_dir} (every prediction of {category}: {index})")
    return records
