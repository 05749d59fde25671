"""Decision thresholds: the calibration rule on good images, and which stored threshold decides.

Calibration (``-c calibrate``): with n good scores that training never saw, sorted, the
threshold is the r-th largest score, r the largest integer with P(Binomial(n, A) >= r) >= G,
and an image is a defect when its score is > the threshold. Why: the new part's false-alarm
rate P(S > X_(r)) exceeds A exactly when fewer than r of the n good scores reach the
(1 - A)-quantile of good scores, and that count is at least Binomial(n, A); so the rate is at
most A with probability at least G (ties included). When even r = 1 fails
(n < ln(1 - G) / ln(1 - A)) the largest score is stored and the confidence it does reach,
1 - (1 - A)^n, is reported with the number of good images that would be needed.

Which threshold decides (``-c predict``, the decision column of ``-c test``): an explicit
``--threshold`` first, else the calibrated one, else the F1-max threshold of ``-c test``
(defect when score >= it, the rule utils/metrics.f1_max optimises).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Calibration:
    """The outcome of the rule: the threshold and what it guarantees."""

    threshold: float
    target_fpr: float          # A
    confidence: float          # G, as asked
    n: int                     # good images scored
    r: int                     # the threshold is the r-th largest good score
    confidence_reached: float  # P(Binomial(n, A) >= r): >= G when enough, else what r = 1 reaches
    images_needed: int         # the fewest good images with which r = 1 reaches G
    enough: bool               # whether n reaches G at all

    def as_dict(self) -> dict[str, Any]:
        """The fields, as the meta and calibration.json store them."""
        return asdict(self)


def images_needed(target_fpr: float, confidence: float) -> int:
    """The smallest n with 1 - (1 - A)^n >= G, i.e. n >= ln(1 - G) / ln(1 - A)."""
    n = max(1, math.ceil(math.log1p(-confidence) / math.log1p(-target_fpr)))
    while 1 - (1 - target_fpr) ** n < confidence:  # float rounding at the boundary
        n += 1
    while n > 1 and 1 - (1 - target_fpr) ** (n - 1) >= confidence:
        n -= 1
    return n


def calibrate_threshold(scores: Any, target_fpr: float, confidence: float = DEFAULT_CONFIDENCE) -> Calibration:
    """The binomial order-statistic threshold of the module docstring for good-image ``scores``."""
    if not 0 < target_fpr < 1 or not 0 < confidence < 1:
        raise ValueError(f"target_fpr and confidence must lie in (0, 1), got {target_fpr} and {confidence}")
    ordered = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))[::-1]  # largest first
    n = int(ordered.size)
    if n == 0:
        raise ValueError("calibration needs at least one good score")
    if not np.isfinite(ordered).all():
        raise ValueError("calibration scores must be finite")
    from scipy.stats import binom  # here: scipy.stats is slow to import, and the parser imports this module

    # P(Binomial(n, A) >= r) = sf(r - 1) falls as r grows: the r that pass form a prefix 1..r_max
    tail = binom.sf(np.arange(n), n, target_fpr)
    passing = int(np.count_nonzero(tail >= confidence))
    r = max(passing, 1)
    return Calibration(threshold=float(ordered[r - 1]), target_fpr=float(target_fpr), confidence=float(confidence),
                       n=n, r=r, confidence_reached=float(tail[r - 1]),
                       images_needed=images_needed(target_fpr, confidence), enough=passing > 0)


@dataclass(frozen=True)
class Threshold:
    """A decision threshold and its origin. ``strict``: defect when score > value (the calibrated
    rule); otherwise when score >= value (F1-max, and an explicit --threshold as before)."""

    value: float
    kind: str       # "calibrated", "F1-max" or "--threshold"
    strict: bool
    source: str     # where it came from, in words
    schedule: dict[str, int | None] | None = None  # the step schedule whose scores made it

    @property
    def rule(self) -> str:
        """The decision rule in words."""
        return f"defect when score {'>' if self.strict else '>='} {self.value:.6f}"

    def decide(self, score: float) -> str:
        """"defect" or "OK"."""
        anomalous = score > self.value if self.strict else score >= self.value
        return "defect" if anomalous else "OK"

    def describe(self) -> str:
        """One line: which threshold, its rule and where it came from."""
        return f"{self.kind} threshold {self.value:.6f} ({self.rule}; {self.source})"

    def as_dict(self) -> dict[str, Any]:
        """As summary.json stores it."""
        return {"value": self.value, "kind": self.kind, "rule": self.rule, "strict": self.strict,
                "source": self.source, "schedule": self.schedule}


def calibrated_threshold(meta: dict[str, Any], meta_path: Path | str) -> Threshold | None:
    """The calibrated threshold stored in a category's meta, if any."""
    cal = meta.get("calibration")
    if not cal:
        return None
    reach = (f"false-alarm rate <= {100 * cal['target_fpr']:g} % with {100 * cal['confidence_reached']:.1f} % "
             f"confidence")
    if not cal.get("enough", True):
        reach += f" (asked {100 * cal['confidence']:g} %: needs {cal['images_needed']} good images)"
    source = f"calibrated on {cal['n']} good images from {cal.get('images_from', '?')}, {reach}; {meta_path}"
    return Threshold(float(cal["threshold"]), "calibrated", True, source, cal.get("schedule"))


def f1_threshold(meta: dict[str, Any], meta_path: Path | str) -> Threshold | None:
    """The F1-max threshold -c test stored in a category's meta, if any."""
    if meta.get("f1_threshold") is None:
        return None
    return Threshold(float(meta["f1_threshold"]), "F1-max", False,
                     f"F1-max on the labelled test set, stored by -c test in {meta_path}", meta.get("f1_schedule"))


def explicit_threshold(value: float, kind: str = "--threshold",
                       source: str = "given on the command line") -> Threshold:
    """A threshold given by the user (defect when score >= it); the Python API names its own kind and source."""
    return Threshold(float(value), kind, False, source)


def choose_threshold(meta: dict[str, Any], meta_path: Path | str, explicit: float | Threshold | None = None,
                     f1: Threshold | None = None) -> Threshold | None:
    """--threshold, else calibrated, else F1-max (``f1`` when given: -c test's fresh one), else None."""
    if isinstance(explicit, Threshold):
        return explicit
    if explicit is not None:
        return explicit_threshold(explicit)
    return calibrated_threshold(meta, meta_path) or f1 or f1_threshold(meta, meta_path)


def schedule_note(threshold: Threshold, schedule: dict[str, int | None]) -> str | None:
    """A warning when a stored threshold was made with another step schedule than the scores now."""
    if threshold.schedule is None or threshold.schedule == schedule:
        return None
    return (f"note: the stored threshold was made with the step schedule {threshold.schedule} ({threshold.kind}), "
            f"but these scores use {schedule}: its decisions may be off (redo it with the same options)")
