"""-c test's pages: a category's results/<category>/report.html from its evaluation, and the run's
results/index.html from every category's summary.json (utils/reports/html.py renders them)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from data.discovery import TestSample
from data.io import read_rgb_uint8
from models.modes import is_two_branch
from utils.core.atomic import atomic_write_text
from utils.core.json_files import BadJsonFile, load_json_file
from utils.evaluation.loop import EvalOutput
from utils.evaluation.metrics import roc_curve_points
from utils.evaluation.mvtec_ad2 import index_figures, native_map_and_mask, protocol_note, protocol_rows
from utils.reports.crops import DETAIL_PICTURES, outline_window, render_details
from utils.reports.figures import render_curve, render_thumbnails
from utils.reports.html import (
    THUMB_SIDE,
    CategoryPage,
    FigureSection,
    ImageRow,
    IndexEntry,
    ThresholdLine,
    picture_uri,
    render_index,
    thumbnail_uris,
    write_category_report,
)
from utils.reports.published import PUBLISHED_METRICS, Comparison
from utils.reports.tables import METRIC_KEYS
from utils.run.meta_schema import is_finite_number, is_int
from utils.run.thresholds import Threshold


def threshold_lines(thresholds: Sequence[Threshold], in_use: Threshold | None, scores: np.ndarray,
                    labels: np.ndarray) -> list[ThresholdLine]:
    """Each threshold with what it does on the labelled test set: false alarms and missed defects."""
    good, bad = labels == 0, labels == 1
    lines = []
    for t in thresholds:
        defect = np.array([t.decide(float(s)) == "defect" for s in scores], dtype=bool)
        lines.append(ThresholdLine(t, t is in_use, int((defect & good).sum()), int(good.sum()),
                                   int((~defect & bad).sum()), int(bad.sum())))
    return lines


def curves(out: EvalOutput) -> tuple[list[tuple[str, str]], str | None]:
    """ROC and PRO curves as embedded PNGs, or a note saying why one is absent."""
    pictures: list[tuple[str, str]] = []
    notes = []
    roc = roc_curve_points(out.scores, out.labels)
    if roc is None:
        notes.append("no ROC curve: this test set has images of one class only (an ROC curve needs good and "
                     "defective images)")
    else:
        pictures.append(("image ROC", picture_uri(render_curve(
            roc[0], roc[1], "Image ROC", "false positive rate", "true positive rate",
            note=f"AUROC {100 * out.metrics['image_auroc']:.2f}"), photo=False)))
    if out.pro_curve is None:
        notes.append("no PRO curve: the ground truth has no defective pixel (or no normal one)")
    else:
        fpr, pro = out.pro_curve
        pictures.append(("PRO", picture_uri(render_curve(
            fpr, pro, "Per-region overlap (PRO)", "false positive rate", "PRO", xlim=(0, 0.3),
            note=f"AUPRO {100 * out.metrics['aupro']:.2f}"), photo=False)))
    return pictures, ("; ".join(notes) or None)


DETAIL = " (detail)"  # the suffix of the detail columns' names


def _with_details(pictures: dict[str, np.ndarray], anomaly_map: np.ndarray, sample: TestSample,
                  map_range: tuple[float, float]) -> str:
    """Add to a row's pictures the detail of its image at its own size (utils/reports/crops.py),
    outline it on the input thumbnail; the detail's caption."""
    rgb = read_rgb_uint8(sample.image_path)
    native, mask = native_map_and_mask(anomaly_map, sample)
    details, window = render_details(rgb, native, mask, map_range)
    pictures["input"] = outline_window(pictures["input"], window, native.shape)
    pictures.update({name + DETAIL: picture for name, picture in details.items()})
    return window.describe(native.shape)


def image_rows(out: EvalOutput, test_set: Dataset, mode: str, decisions: list[str] | None,
               map_range: tuple[float, float], progress: bool, details: bool = False) -> list[ImageRow]:
    """One row per test image, its pictures re-read from the test set (in evaluation order);
    ``details``: with each image's detail at its own resolution (the test set's ``samples``)."""
    rows = []
    for i in tqdm(range(len(out.paths)), desc="report", disable=not progress, leave=False, unit="image"):
        item = test_set[i]
        if item["path"] != out.paths[i]:  # evaluation keeps dataset order; a mismatch is a bug
            raise RuntimeError(f"report rows out of order: {item['path']} != {out.paths[i]}")
        pictures = render_thumbnails(item["image"].float().numpy(), out.maps[i], out.masks[i], mode, map_range,
                                     THUMB_SIDE)
        detail = _with_details(pictures, out.maps[i], test_set.samples[i], map_range) if details else None
        rows.append(ImageRow(path=out.paths[i], name=f"{out.defects[i]}/{Path(out.paths[i]).name}",
                             score=float(out.scores[i]), label=int(out.labels[i]),
                             decision=decisions[i] if decisions else None,
                             pictures=thumbnail_uris(pictures), steps=int(out.steps[i]), detail=detail))
    return rows


def write_test_report(folder: Path, title: str, out: EvalOutput, test_set: Dataset, mode: str,
                      facts: list[tuple[str, str]], thresholds: list[ThresholdLine], decisions: list[str] | None,
                      comparison: Comparison | None, published_source: str | None, map_range: tuple[float, float],
                      notes: list[str], progress: bool = False, mvtec_ad2: dict[str, Any] | None = None) -> Path:
    """results/<category>/report.html for one evaluation; ``mvtec_ad2``: the scenario's protocol
    figures (summary.json's), shown in their own table, with each image's detail at its own size."""
    pictures, note = curves(out)
    columns = ["input", "depth", "heat map", "ground truth"] if is_two_branch(mode) else ["input", "heat map",
                                                                                      "ground truth"]
    details = mvtec_ad2 is not None
    sections = [FigureSection("MVTec AD 2 protocol", protocol_rows(mvtec_ad2), protocol_note(mvtec_ad2))] \
        if details else []
    page = CategoryPage(title=title, facts=facts, columns=columns,
                        rows=image_rows(out, test_set, mode, decisions, map_range, progress, details),
                        metrics=out.metrics, comparison=comparison, published_source=published_source,
                        thresholds=thresholds, curves=pictures, curves_note=note, notes=notes, sections=sections,
                        detail_columns=[c + DETAIL for c in DETAIL_PICTURES] if details else [])
    return write_category_report(folder, page)


def _numbers(values: Any, keys: Sequence[str]) -> bool:
    """A dict whose ``keys`` hold floats (NaN included: an undefined metric), integers a float holds, or null."""
    return isinstance(values, dict) and all(
        values.get(k) is None or isinstance(values[k], float) or is_finite_number(values[k]) for k in keys)


def _usable(s: Any) -> bool:
    """Whether a summary.json holds what the overview reads, as -c test writes it (a run folder
    from elsewhere may hold anything)."""
    if not isinstance(s, dict) or not _numbers(s.get("metrics"), METRIC_KEYS):
        return False
    if s.get("published") is not None and not all(
            _numbers(d, PUBLISHED_METRICS) and set(PUBLISHED_METRICS) <= set(d) for d in (s["published"], s.get("delta"))):
        return False
    t = s.get("decision_threshold")
    if t is not None and not (isinstance(t, dict) and isinstance(t.get("kind"), str) and is_finite_number(t.get("value"))):
        return False
    count = s.get("n_images", 0)
    mistakes = s.get("n_mistakes")
    return is_int(count) and (mistakes is None or is_int(mistakes)) and all(
        isinstance(s.get(k, ""), str) for k in ("category", "dataset", "mode"))


def _summaries(results_root: Path) -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for p in sorted(results_root.glob("*/summary.json")):
        try:
            s = load_json_file(p)
        except (OSError, BadJsonFile):
            continue  # unreadable: leave it out of the overview
        if _usable(s):
            found.append((p, s))
    return found


def write_run_index(path: Path, run: str) -> Path:
    """The index page ``path`` (results/index.html, or results/multiclass/index.html) over every
    category beside it that has a summary.json."""
    entries, datasets = [], set()
    for p, s in _summaries(path.parent):
        datasets.add(f"{s.get('dataset', '?')} / {s.get('mode', '?')}")
        cmp = Comparison(s["published"], s["delta"]) if s.get("published") else None
        entries.append(IndexEntry(category=s.get("category", p.parent.name), metrics=s["metrics"], comparison=cmp,
                                  threshold=s.get("decision_threshold"), n_images=int(s.get("n_images", 0)),
                                  n_mistakes=s.get("n_mistakes"), report=f"{p.parent.name}/report.html",
                                  extra=index_figures(s.get("mvtec_ad2"))))
    facts = [("run", run), ("dataset / mode", ", ".join(sorted(datasets))), ("categories", str(len(entries))),
             ("written", time.strftime("%Y-%m-%d %H:%M:%S"))]
    atomic_write_text(path, render_index(run, entries, facts))
    return path


def page_facts(run: str, category: str, summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The facts at the top of a category page."""
    schedule = summary.get("schedule") or {}
    steps = ", ".join(f"{k} {v}" for k, v in schedule.items() if v is not None) or "all T − 2 reverse steps"
    return [("run", run), ("category", category),
            ("dataset / mode", f"{summary.get('dataset')} / {summary.get('mode')}"),
            ("checkpoint", str(summary.get("checkpoint"))), ("epoch", str(summary.get("epoch") or "released")),
            ("images", f"{summary['n_images']} ({summary['n_anomalous']} defective)"), ("step schedule", steps),
            ("written", time.strftime("%Y-%m-%d %H:%M:%S"))]
