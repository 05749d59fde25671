"""``-c predict``: score new, unlabelled images with a trained run.

Writes per image a heat-map picture and one line of ``predictions.jsonl`` (path, score,
decision); the decision uses ``--threshold`` or the F1-max threshold that ``-c test`` stored
for the run, and is left out (scores only) when neither exists. Unreadable inputs are
reported and skipped; the rest are still scored.
"""
from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from data.catalog import IMAGE_EXTENSIONS
from data.datasets import model_input
from models.modes import has_depth
from models.scoring import score_batch
from utils.atomic import atomic_write_text
from utils.config import runtime_options, scoring_options
from utils.errors import TransFusionError
from utils.runs import RunPaths, load_network
from utils.testing import checked_process


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


def _pick_category(paths: RunPaths, category: str) -> str:
    if category != "all":
        return category
    found = sorted(p.name[: -len("_model.pkl")] for p in paths.models.glob("*_model.pkl"))
    if len(found) == 1:
        return found[0]
    raise TransFusionError(f"-c predict needs --category: {paths.models} holds "
                           f"{', '.join(found) if found else 'no models'}")


def predict(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    from utils.visualize import save_panel

    paths = RunPaths(args.log_path, args.run_name)
    category = _pick_category(paths, args.category)
    runtime, scoring = runtime_options(args), scoring_options(args)
    net, meta = load_network(paths, category, args.mode, args.unet_channel_num, runtime, device)
    mode = net.cfg.mode
    size = int(meta.get("img_size") or args.img_size)
    depth_norm = tuple(meta["depth_norm"]) if meta.get("depth_norm") else None
    if has_depth(mode) and depth_norm is None:
        raise TransFusionError(f"{paths.meta(category)} has no depth range; run -c test on this run once "
                               f"(it needs the training set) before predicting in mode {mode}")
    threshold = args.threshold if args.threshold is not None else meta.get("f1_threshold")
    if threshold is None:
        print(f"note: no --threshold and no stored threshold for {category} (run -c test to store the "
              f"F1-max one): printing scores only")
    elif args.threshold is None and meta.get("f1_schedule", scoring.schedule()) != scoring.schedule():
        print(f"note: the stored threshold was made with the step schedule {meta['f1_schedule']}, but this run "
              f"scores with {scoring.schedule()}: its decisions may be off (run -c test with the same options)")
    map_range = tuple(meta.get("map_range") or (0.0, 1.0))  # the test set's, so pictures compare
    process = checked_process(int(meta.get("diffusion_num_steps") or args.diffusion_num_steps), mode,
                              scoring.eval_steps, paths.meta(category))
    out_dir = paths.root / "predictions" / category
    out_dir.mkdir(parents=True, exist_ok=True)

    inputs = collect_inputs(args.input)
    records: list[dict[str, Any]] = []
    skipped = 0
    batch_paths: list[Path] = []
    batch_images: list[torch.Tensor] = []

    def flush() -> None:
        if not batch_images:
            return
        images = torch.stack(batch_images).to(device)
        maps, recon = score_batch(runtime.callable(net), process, images, scoring, runtime,
                                  keep_reconstruction=True)
        for i, p in enumerate(batch_paths):
            score = float(maps.scores[i])
            if score != score:  # NaN
                raise TransFusionError(f"the anomaly map of {p} is not finite: the checkpoint looks corrupt")
            decision = None if threshold is None else ("defect" if score >= threshold else "OK")
            heat = out_dir / f"{len(records):05d}_{p.stem}.png"
            save_panel(heat, images[i].float().cpu().numpy(), maps.final[i].cpu().numpy(), None,
                       recon[i].float().cpu().numpy(), mode, score=score,
                       title=f"{p.name}: {decision or 'score'}", map_range=map_range)
            records.append({"path": str(p), "score": score, "decision": decision, "threshold": threshold,
                            "steps": int(maps.steps_run[i]), "heatmap": str(heat)})
            print(f"{score:.6f}  {decision or '':6s}  {p}")
        batch_paths.clear()
        batch_images.clear()

    for p in tqdm(inputs, desc="predict", disable=args.quiet, leave=False):
        try:
            batch_images.append(model_input(p, mode, size, depth_norm))
            batch_paths.append(p)
        except TransFusionError as exc:
            skipped += 1
            print(f"skipped: {exc}")
            continue
        if len(batch_images) == args.eval_bs:
            flush()
    flush()
    atomic_write_text(out_dir / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    print(f"{len(records)} image(s) scored, {skipped} skipped; heat maps and predictions.jsonl in {out_dir}")
    return records
