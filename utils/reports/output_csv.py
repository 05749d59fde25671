"""``output.csv``: one row per evaluated category, appended by every -c test (and evaluation during
training), with the published figures and Δ where a released run's figures match."""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from utils.core.atomic import atomic_append_line, atomic_write_text
from utils.reports.published import PUBLISHED_METRICS, Comparison
from utils.reports.tables import fmt_delta, fmt_pct

# Columns of output.csv: new columns are only ever appended, so readers by position keep working.
OUTPUT_CSV_COLUMNS = ("timestamp", "run", "category", "epoch", "image_auroc", "aupro", "pixel_auroc", "image_ap",
                      "image_f1_max", "pixel_ap", *(f"published_{k}" for k in PUBLISHED_METRICS),
                      *(f"delta_{k}" for k in PUBLISHED_METRICS), "network")
# The category of the row that closes a multi-class network's rows: the mean over its categories.
AVERAGE_ROW = "Average"
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
                      comparison: Comparison | None = None, network: str | None = None) -> None:
    """One row per evaluated category, percentages (Δ in signed points); the header is written once.
    ``network``: the network that scored it (its key: the category itself, or "multiclass")."""
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
    atomic_append_line(path, ",".join([stamp, run, category, str(epoch), *values, network or category]))
