"""The files -c test writes for a category: per-image CSV, summary JSON, ROC and PRO curves, and
with --visualize one panel per image (all on the category's heat-map scale)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from utils.core.atomic import atomic_write_json, atomic_write_text
from utils.evaluation.loop import EvalOutput
from utils.evaluation.metrics import roc_curve_points
from utils.reports.figures import save_curve, save_panel
from utils.reports.tables import fmt_pct


def heat_map_range(maps: np.ndarray) -> tuple[float, float]:
    """One heat-map scale per category, so panels compare: from the median value (the typical
    normal surface: blue) to the largest (red). Each rank draws its own shard with it."""
    return float(np.median(maps)), float(maps.max())


def write_panels(folder: Path, out: EvalOutput, mode: str) -> None:
    """One panel per image this rank scored (input | ground truth | heat map | reconstruction),
    all on the category's heat-map scale (evaluate(..., keep_pictures=True) keeps them)."""
    map_range = heat_map_range(out.maps)
    at = {p: i for i, p in enumerate(out.paths)}
    for batch, recon in out.pictures:
        idx = [at[p] for p in batch["path"]]
        _panels_of_batch(folder, batch, out.maps[idx], out.scores[idx], recon, mode, map_range)


def _panels_of_batch(folder: Path, batch: dict[str, Any], final: np.ndarray, scores: np.ndarray,
                     recon: np.ndarray, mode: str, map_range: tuple[float, float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(batch["path"]):
        defect = batch["defect"][i]
        name = f"{defect}_{Path(path).stem}.png"
        gt = batch["mask"][i, 0].numpy() if int(batch["label"][i]) else None
        save_panel(folder / name, batch["image"][i].float().numpy(), final[i], gt, recon[i], mode,
                   score=float(scores[i]), title=f"{defect}/{Path(path).name}", map_range=map_range)


def write_results(out: EvalOutput, folder: Path, summary_extra: dict[str, Any],
                  decisions: list[str] | None = None) -> None:
    """Per-image CSV (with each image's decision, empty without a threshold), a JSON summary with
    every metric, ROC and PRO curves as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    decisions = decisions if decisions is not None else [""] * len(out.paths)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image_path", "label", "defect", "score", "steps", "decision"])
    for p, y, d, s, n, decision in zip(out.paths, out.labels, out.defects, out.scores, out.steps, decisions):
        w.writerow([p, int(y), d, f"{s:.8f}", int(n), decision])
    atomic_write_text(folder / "per_image.csv", buf.getvalue())
    summary = {"metrics": out.metrics, "n_images": int(len(out.scores)),
               "mean_steps": round(float(out.steps.mean()), 3) if len(out.steps) else None,
               "n_anomalous": int(out.labels.sum()), "seconds": round(out.seconds, 2),
               "seconds_per_image": round(out.seconds / max(1, len(out.scores)), 4), **summary_extra}
    atomic_write_json(folder / "summary.json", summary)
    roc = roc_curve_points(out.scores, out.labels)
    if roc is not None:
        save_curve(folder / "roc.png", roc[0], roc[1], "Image ROC", "false positive rate",
                   "true positive rate", note=f"AUROC {fmt_pct(out.metrics.get('image_auroc'))}")
    if out.pro_curve is not None:
        fpr, pro = out.pro_curve
        save_curve(folder / "pro.png", fpr, pro, "Per-region overlap (PRO)", "false positive rate",
                   "PRO", xlim=(0, 0.3), note=f"AUPRO {fmt_pct(out.metrics.get('aupro'))}")
