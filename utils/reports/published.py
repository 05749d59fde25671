"""The authors' published per-category results of the released runs, read from the data files
in utils/reports/published_data/ (where they come from: its README.md), and ours beside them.

Figures exist only for the released runs' datasets, each in the mode its run was trained in
(data/catalog.py RELEASED_RUN_MODES); a lookup for anything else is None, so a run on one's
own parts or in another mode is never compared with numbers that do not belong to it.
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.catalog import PUBLISHED_MULTICLASS_MODES, RELEASED_RUN_MODES
from utils.core.errors import TransFusionError

PUBLISHED_DIR = Path(__file__).resolve().with_name("published_data")
# the files' columns and the metric keys of utils/evaluation/metrics.py they hold (fractions)
_COLUMNS = {"Roc Img": "image_auroc", "PRO Img": "aupro", "Roc Pixel": "pixel_auroc", "AP Pixel": "pixel_ap"}
PUBLISHED_METRICS: tuple[str, ...] = tuple(_COLUMNS.values())
_MEAN_ROW = "Average"


@dataclass(frozen=True)
class PublishedTable:
    """One published run's figures: per category, and the authors' own mean row."""

    dataset: str
    mode: str
    multiclass: bool                           # one network for every category (docs/method.md §10)
    source: str                                # the data file and where it comes from
    settings: dict[str, float]                 # epoch, eval weight, kernel size the figures were made with
    categories: dict[str, dict[str, float]]    # category -> metric -> fraction
    mean: dict[str, float]                     # the file's last row (all categories)


@functools.lru_cache(maxsize=None)
def published_table(dataset: str, multiclass: bool = False) -> PublishedTable | None:
    """The published run's table for ``dataset`` (``multiclass``: its one-network run); None where
    the authors published no such run."""
    modes = PUBLISHED_MULTICLASS_MODES if multiclass else RELEASED_RUN_MODES
    if dataset not in modes:
        return None
    path = PUBLISHED_DIR / (f"{dataset}_multiclass.csv" if multiclass else f"{dataset}.csv")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        settings = {"epoch": float(rows[0]["Epoch"]), "eval_w": float(rows[0]["Weight"]),
                    "kernel_size": float(rows[0]["Kernel Size"])}
        table = {r["Category"]: {key: float(r[col]) for col, key in _COLUMNS.items()} for r in rows}
    except (OSError, KeyError, ValueError, IndexError) as exc:
        raise TransFusionError(f"{path} is not the published-results file it should be ({exc}); "
                               f"restore it from utils/reports/published_data/README.md's source") from None
    mean = table.pop(_MEAN_ROW)
    source = f"utils/reports/published_data/{path.name}, from MaticFuc/ECCV_TransFusion results/{path.name}"
    return PublishedTable(dataset, modes[dataset], multiclass, source, settings, table, mean)


def published_figures(dataset: str, mode: str, category: str, multiclass: bool = False) -> dict[str, float] | None:
    """The published figures (fractions) of one category when dataset, mode, category and the kind
    of run (one network per category, or ``multiclass``) match a published run; None otherwise."""
    table = published_table(dataset, multiclass)
    if table is None or mode != table.mode:
        return None
    return table.categories.get(category)


def union_difference(dataset: str, categories: list[str]) -> str | None:
    """A multi-class network trained on other categories than the published multi-class run's is not
    the same model: one line saying so (the comparison is then indicative), or None."""
    table = published_table(dataset, multiclass=True)
    if table is None or sorted(categories) == sorted(table.categories):
        return None
    left_out = sorted(set(table.categories) - set(categories))
    added = sorted(set(categories) - set(table.categories))
    parts = ([f"without {', '.join(left_out)}"] if left_out else []) + ([f"with {', '.join(added)}"] if added else [])
    return (f"note: this network was trained on {len(categories)} categories, the published multi-class run on its "
            f"{len(table.categories)} ({'; '.join(parts)}): the comparison is indicative")


def settings_differences(dataset: str, eval_w: float, kernel_size: int,
                         schedule: dict[str, int | None]) -> list[str]:
    """How a test's scoring differs from the one the published figures were made with (empty: the
    same): the eval weight and kernel the files record, and all T - 2 reverse steps."""
    table = published_table(dataset)
    if table is None:
        return []
    differ = []
    if eval_w != table.settings["eval_w"]:
        differ.append(f"--eval-w {eval_w:g} (published: {table.settings['eval_w']:g})")
    if kernel_size != table.settings["kernel_size"]:
        differ.append(f"--eval-kernel-size {kernel_size} (published: {table.settings['kernel_size']:g})")
    differ += [f"--{k.replace('_', '-')} {v}" for k, v in schedule.items() if v is not None]
    return differ


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
