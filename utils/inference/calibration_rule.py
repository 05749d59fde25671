"""The calibration rule of ``-c calibrate``: a threshold from good images with a stated false-alarm rate.

With n good scores that training never saw, sorted, the threshold is the r-th largest score,
r the largest integer with P(Binomial(n, A) >= r) >= G, and an image is a defect when its score
is > the threshold. Why: the new part's false-alarm rate P(S > X_(r)) exceeds A exactly when
fewer than r of the n good scores reach the (1 - A)-quantile of good scores, and that count is
at least Binomial(n, A); so the rate is at most A with probability at least G (ties included).
When even r = 1 fails (n < ln(1 - G) / ln(1 - A)) the largest score is stored and the
confidence it does reach, 1 - (1 - A)^n, is reported with the number of good images that would
be needed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
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
