"""What an evaluation leaves behind: per-image CSV, summary JSON, curves, panels, output.csv and
the tables printed at the end of -c test."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from utils.atomic import atomic_append_line, atomic_write_json, atomic_write_text
from utils.evaluation import EvalOutput
from utils.metrics import roc_curve_points
from utils.visualize import save_curve, save_panel

METRIC_KEYS = ("image_auroc", "aupro", "pixel_auroc", "image_ap", "image_f1_max")


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


def fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def write_results(out: EvalOutput, folder: Path, summary_extra: dict[str, Any]) -> None:
    """Per-image CSV, a JSON summary with every metric, ROC and PRO curves as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image_path", "label", "defect", "score", "steps"])
    for p, y, d, s, n in zip(out.paths, out.labels, out.defects, out.scores, out.steps):
        w.writerow([p, int(y), d, f"{s:.8f}", int(n)])
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


OUTPUT_CSV_HEADER = "timestamp,run,category,epoch,image_auroc,aupro,pixel_auroc,image_ap,image_f1_max"


def append_output_csv(path: Path, run: str, category: str, epoch: Any, metrics: dict[str, Any]) -> None:
    """One row per evaluated category, percentages; the header is written once."""
    if not path.exists():
        atomic_write_text(path, OUTPUT_CSV_HEADER + "\n")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    values = [fmt_pct(metrics.get(k)) for k in METRIC_KEYS]
    atomic_append_line(path, ",".join([stamp, run, category, str(epoch), *values]))


def markdown_table(rows: dict[str, dict[str, Any]]) -> str:
    """Categories and their mean, in percent."""
    head = "| category | image AUROC | AUPRO | pixel AUROC | image AP | image F1-max |"
    lines = [head, "|" + "---|" * 6]
    for cat, m in rows.items():
        lines.append(f"| {cat} | " + " | ".join(fmt_pct(m.get(k)) for k in METRIC_KEYS) + " |")
    mean = mean_metrics(rows)
    lines.append("| **mean** | " + " | ".join(fmt_pct(mean.get(k)) for k in METRIC_KEYS) + " |")
    return "\n".join(lines)


def mean_metrics(rows: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    mean: dict[str, float | None] = {}
    for k in METRIC_KEYS:
        vals = [m[k] for m in rows.values() if m.get(k) is not None]
        mean[k] = float(np.mean(vals)) if vals else None
    return mean


def avg_line(rows: dict[str, dict[str, Any]]) -> str:
    """The original's closing line."""
    mean = mean_metrics(rows)
    return f"AVG AUROC: {fmt_pct(mean['image_auroc'])}, AVG AUPRO: {fmt_pct(mean['aupro'])}"
