"""The metrics as a person reads them: their order and names, percentages, the markdown table
printed at the end of -c test and -c demo (with the published figures and Δ = ours − published
where a released run's figures match) and the original's closing AVG line."""
from __future__ import annotations

from typing import Any

import numpy as np

from utils.reports.published import PUBLISHED_METRICS, Comparison, compare, compare_mean

# The reported metrics in the order of the printed table (the four published ones first).
METRIC_KEYS = ("image_auroc", "aupro", "pixel_auroc", "pixel_ap", "image_ap", "image_f1_max")
METRIC_NAMES = {"image_auroc": "image AUROC", "aupro": "AUPRO", "pixel_auroc": "pixel AUROC", "pixel_ap": "pixel AP",
                "image_ap": "image AP", "image_f1_max": "image F1-max"}


def fmt_pct(value: float | None) -> str:
    """A fraction in percent with two decimals ("n/a" for undefined)."""
    return "n/a" if value is None else f"{100 * value:.2f}"


def fmt_delta(value: float | None) -> str:
    """A difference of fractions in signed percentage points with two decimals ("0.00" unsigned)."""
    if value is None:
        return "n/a"
    text = f"{100 * value:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text


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


def avg_line(rows: dict[str, dict[str, Any]], pixel: bool = False) -> str:
    """The original's closing line; ``pixel``: -c test_multiclass's, with the pixel means too (the
    original prints the last one rounded to an integer, a slip: 2 decimals here)."""
    mean = mean_metrics(rows)
    line = f"AVG AUROC: {fmt_pct(mean['image_auroc'])}, AVG AUPRO: {fmt_pct(mean['aupro'])}"
    if pixel:
        line += f", AVG AUROC PIX: {fmt_pct(mean['pixel_auroc'])}, AVG AP PIX: {fmt_pct(mean['pixel_ap'])}"
    return line
