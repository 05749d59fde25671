"""The decision thresholds a run stores, and which one decides.

-c test stores its F1-max threshold in the category's meta, -c calibrate its calibrated one
(the rule: utils/inference/calibration_rule.py). Which threshold decides (``-c predict``, the
decision column of ``-c test``, `transfusion.Detector`): an explicit ``--threshold`` first, else
the calibrated one (defect when score > it), else the F1-max one (defect when score >= it, the
rule utils/evaluation/metrics.f1_max optimises). A threshold is only valid for the step schedule
whose scores made it: each carries that schedule, and a mismatch is said.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
