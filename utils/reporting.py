"""What an evaluation leaves behind: per-image CSV, summary JSON, curves, panels, output.csv and
the tables printed at the end of -c test (with the published figures and Δ = ours − published
where a released run's figures match)."""
from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.atomic import atomic_append_line, atomic_write_json, atomic_write_text
from utils.evaluation import EvalOutput
from utils.metrics import roc_curve_points
from utils.published_figures import PUBLISHED_METRICS
from utils.visualize import save_curve, save_panel

# The reported metrics in the order of the printed table (the four published ones first).
METRIC_KEYS = ("image_auroc", "aupro", "pixel_auroc", "pixel_ap", "image_ap", "image_f1_max")
METRIC_NAMES = {"image_auroc": "image AUROC", "aupro": "AUPRO", "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP",
                "image_ap": "image AP", "image_f1_max": "image F1-max"}


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
    """A fraction in percent with two decimals ("n/a" for undefined)."""
    return "n/a" if value is None else f"{100 * value:.2f}"


def fmt_delta(value: float | None) -> str:
    """A difference of fractions in signed percentage points with two decimals ("0.00" unsigned)."""
    if value is None:
        return "n/a"
    text = f"{100 * value:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text


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


@dataclass(frozen=True)
class Comparison:
    """Published figures beside ours (fractions): ``delta`` = ours − published, per metric."""

    published: dict[str, float | None]
    delta: dict[str, float | None]

    def as_dict(self) -> dict[str, dict[str, float | None]]:
        return {"published": dict(self.published), "delta": dict(self.delta)}


def compare(ours: dict[str, Any], published: dict[str, float] | None) -> Comparison | None:
    """One category: the published figures and ours − published; None without figures."""
    if not published:
        return None
    delta = {k: None if ours.get(k) is None else ours[k] - published[k] for k in PUBLISHED_METRICS}
    return Comparison({k: published[k] for k in PUBLISHED_METRICS}, delta)


def compare_mean(rows: dict[str, dict[str, Any]], published: dict[str, dict[str, float] | None]) -> Comparison | None:
    """The mean row, like with like: per metric, the published figures averaged over the categories
    that have both a figure and our value, and our mean over those same categories minus it."""
    if not any(published.get(c) for c in rows):
        return None
    pub: dict[str, float | None] = {}
    delta: dict[str, float | None] = {}
    for k in PUBLISHED_METRICS:
        both = [c for c, m in rows.items() if published.get(c) and m.get(k) is not None]
        if not both:
            pub[k] = delta[k] = None
            continue
        pub[k] = float(np.mean([published[c][k] for c in both]))  # type: ignore[index]
        delta[k] = float(np.mean([rows[c][k] for c in both])) - pub[k]
    return Comparison(pub, delta)


# Columns of output.csv: new columns are only ever appended, so readers by position keep working.
OUTPUT_CSV_COLUMNS = ("timestamp", "run", "category", "epoch", "image_auroc", "aupro", "pixel_auroc", "image_ap",
                      "image_f1_max", "pixel_ap", *(f"published_{k}" for k in PUBLISHED_METRICS),
                      *(f"delta_{k}" for k in PUBLISHED_METRICS))
OUTPUT_CSV_HEADER = ",".join(OUTPUT_CSV_COLUMNS)


def _upgrade_output_csv(path: Path) -> None:
    """An output.csv written with fewer columns is rewritten with today's header; its rows keep their
    values by column name, new columns left empty."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(OUTPUT_CSV_COLUMNS)
    for r in rows:
        w.writerow([r.get(c) or "" for c in OUTPUT_CSV_COLUMNS])
    atomic_write_text(path, buf.getvalue())


def append_output_csv(path: Path, run: str, category: str, epoch: Any, metrics: dict[str, Any],
                      comparison: Comparison | None = None) -> None:
    """One row per evaluated category, percentages (Δ in signed points); the header is written once."""
    if not path.exists():
        atomic_write_text(path, OUTPUT_CSV_HEADER + "\n")
    else:
        with open(path, encoding="utf-8") as f:
            header = f.readline().strip()
        if header != OUTPUT_CSV_HEADER:
            _upgrade_output_csv(path)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    values = [fmt_pct(metrics.get(k)) for k in OUTPUT_CSV_COLUMNS[4:10]]
    if comparison is None:
        values += [""] * (2 * len(PUBLISHED_METRICS))
    else:
        values += [fmt_pct(comparison.published[k]) for k in PUBLISHED_METRICS]
        values += [fmt_delta(comparison.delta[k]) for k in PUBLISHED_METRICS]
    atomic_append_line(path, ",".join([stamp, run, category, str(epoch), *values]))


def markdown_table(rows: dict[str, dict[str, Any]],
                   published: dict[str, dict[str, float] | None] | None = None) -> str:
    """Categories and their mean, in percent; where released-run figures are given (``published``:
    category -> figures), each published metric shows ours | published | Δ."""
    published = published or {}
    mean_cmp = compare_mean(rows, published)
    shown = [(k, mean_cmp is not None and k in PUBLISHED_METRICS) for k in METRIC_KEYS]
    head = ["category"]
    for k, with_pub in shown:
        head += [METRIC_NAMES[k], "published", "Δ"] if with_pub else [METRIC_NAMES[k]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cells(ours: dict[str, Any], cmp: Comparison | None) -> list[str]:
        out = []
        for k, with_pub in shown:
            out.append(fmt_pct(ours.get(k)))
            if with_pub:
                out += ["n/a", "n/a"] if cmp is None else [fmt_pct(cmp.published[k]), fmt_delta(cmp.delta[k])]
        return out

    for cat, m in rows.items():
        lines.append(f"| {cat} | " + " | ".join(cells(m, compare(m, published.get(cat)))) + " |")
    lines.append("| **mean** | " + " | ".join(cells(mean_metrics(rows), mean_cmp)) + " |")
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
