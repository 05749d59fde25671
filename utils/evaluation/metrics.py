"""Exact anomaly-detection metrics (docs/method.md §7), numpy in / numpy out.

Image level: AUROC, average precision, F1-max and the ROC curve.
Pixel level: pixel AUROC, pixel average precision and AUPRO up to a false-positive rate of 0.3.

Every metric is exact: the curves use every distinct score as a threshold
(a sample is called anomalous when its score is >= the threshold), and tied
scores form one curve step, which is a diagonal segment when the tie mixes
classes. Metrics that are undefined for the given labels (one class only)
return None instead of raising, so a whole evaluation never crashes on a
degenerate category.

Pixel metrics are built from ONE sort of all map values (the only full-size
copy of the maps), plus binary searches of the anomalous pixels into that
sorted array. Anomalous pixels are few, so the extra work is small next to
the sort. The identities used (per anomalous pixel a with PRO weight w_a,
N_n normal pixels, and "#n < a" = number of normal pixels with value < a):

* pixel AUROC = sum_a (#n < a + #n <= a) / 2 / (N_a * N_n)
  (Mann-Whitney U with ties counted 1/2).
* The trapezoid over the PRO curve: a tie group of c normal pixels at value u
  is one curve segment of width c / N_n whose ends have PRO(> u) and
  PRO(>= u); summing per normal pixel and swapping the order of summation
  gives sum_a w_a * (#n < a + #n <= a) / 2 / N_n over the normal pixels that
  lie fully inside [0, max_fpr]. The one tie group that straddles max_fpr is
  handled on its own with linear interpolation.
* pixel AP = sum over distinct values v of anomalous pixels of (#a == v / N_a) *
  precision(>= v) (scikit-learn's average_precision_score, no interpolation), which is
  the mean over anomalous pixels a of (#a >= a) / (#all >= a): tied pixels share one
  precision, so each distinct value is weighted by how many anomalous pixels hold it.

The building blocks (`anomalous_pixels`, `sort_anomalous`, `PixelRanks` over a `SortedPixels`,
`ranked_pixel_metrics`) are shared with utils/evaluation/native_metrics.py, which computes the
same metrics at each image's own resolution from counts instead of one sorted copy.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

# 8-connectivity for ground-truth components (docs/method.md §7).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------

def _check_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (float64 scores, bool labels) as flat arrays, or raise ValueError."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels)
    if y.dtype != bool:
        y = y != 0
    y = y.reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s, y


def _check_max_fpr(max_fpr: float) -> None:
    """The integration limit of an AUPRO: a false-positive rate in (0, 1]."""
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")


def _check_maps_masks(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (maps [N,H,W], bool masks [N,H,W]) without copying maps."""
    m = np.asarray(maps)
    g = np.asarray(masks)
    # Accept one [H,W] map, and [N,1,H,W] as the model's batches come.
    if m.ndim == 2:
        m = m[None]
    if g.ndim == 2:
        g = g[None]
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if g.ndim == 4 and g.shape[1] == 1:
        g = g[:, 0]
    if m.ndim != 3 or m.shape != g.shape:
        raise ValueError(f"maps {np.shape(maps)} and masks {np.shape(masks)} must both be [N,H,W]")
    if m.dtype == bool:
        # Comparisons on bool arrays behave oddly in searchsorted; bool maps
        # are tiny in practice so the copy is harmless.
        m = m.astype(np.uint8)
    if g.dtype != bool:
        g = g != 0
    return m, g


# ---------------------------------------------------------------------------
# Image level
# ---------------------------------------------------------------------------

def _descending_tie_groups(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) with cumulative TP and FP counts at each.

    Entry j counts the samples with score >= thresholds[j].
    """
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    y_sorted = y[order]
    # The last index of every run of equal scores: the curve only has a
    # vertex there, so tied samples move together.
    ends = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tp = np.cumsum(y_sorted)[ends]
    fp = (ends + 1) - tp
    return s_sorted[ends], tp, fp


def image_auroc(scores: Any, labels: Any) -> float | None:
    """Area under the ROC curve (ties count 1/2); None unless both classes occur."""
    s, y = _check_scores_labels(scores, labels)
    pos, neg = s[y], np.sort(s[~y])
    if pos.size == 0 or neg.size == 0:
        return None
    below = np.searchsorted(neg, pos, side="left").sum(dtype=np.int64)
    below_or_equal = np.searchsorted(neg, pos, side="right").sum(dtype=np.int64)
    return float((below + below_or_equal) / (2.0 * pos.size * neg.size))


def roc_curve_points(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact ROC curve (fpr, tpr) from (0, 0) to (1, 1); None unless both classes occur."""
    s, y = _check_scores_labels(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, tp, fp = _descending_tie_groups(s, y)
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    return fpr, tpr


def image_ap(scores: Any, labels: Any) -> float | None:
    """Average precision, sum_k (R_k - R_{k-1}) P_k (as sklearn); None without positives.

    Defined (1.0 for any scores) when every sample is anomalous, undefined when
    none is.
    """
    s, y = _check_scores_labels(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    _, tp, fp = _descending_tie_groups(s, y)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_max(scores: Any, labels: Any) -> tuple[float, float] | None:
    """Best F1 over all thresholds and that threshold (anomalous iff score >= threshold).

    When several thresholds reach the same best F1 the highest one is
    returned. None when there are no anomalous samples (F1 is 0 everywhere).
    """
    s, y = _check_scores_labels(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0:
        return None
    thresholds, tp, fp = _descending_tie_groups(s, y)
    # F1 = 2TP / (2TP + FP + FN) and TP + FN = n_pos; no 0/0 since n_pos > 0.
    f1 = 2.0 * tp / (tp + fp + n_pos)
    best = int(np.argmax(f1))  # first = highest threshold among equals
    return float(f1[best]), float(thresholds[best])


# ---------------------------------------------------------------------------
# Pixel level
# ---------------------------------------------------------------------------

def anomalous_pixels(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values of all anomalous pixels, their component index and the component sizes.

    Components are labelled per image (8-connectivity) inside the bounding box
    of that image's mask, so nothing of full-stack size is allocated.
    """
    n = masks.shape[0]
    has_defect = np.flatnonzero(masks.reshape(n, -1).any(axis=1))
    values: list[np.ndarray] = []
    component_of_pixel: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    n_components = 0
    for i in has_defect:
        mask = masks[i]
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        sub = mask[box]
        labels, count = ndimage.label(sub, structure=_EIGHT_CONNECTED)
        pixel_labels = labels[sub]
        values.append(maps[i][box][sub])
        pixel_labels += n_components - 1  # global, 0-based component index
        component_of_pixel.append(pixel_labels)
        sizes.append(np.bincount(pixel_labels - (n_components - 1), minlength=count + 1)[1:])
        n_components += count
    if n_components == 0:
        return np.empty(0, dtype=maps.dtype), np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64)
    return np.concatenate(values), np.concatenate(component_of_pixel), np.concatenate(sizes)


# Anomalous pixels are processed in slices of this many, which bounds the
# temporaries of the per-pixel sums (a few arrays of 8-byte integers).
_CHUNK = 1 << 18


class SortedPixels:
    """Every pixel value of the maps, sorted: the one full-size copy pixel_metrics makes.

    This is the counting interface `PixelRanks` is built on (``n_total``, ``below``,
    ``candidates``, ``thresholds_from``); utils/evaluation/native_metrics.py gives the same
    interface from counts of the normal pixels between anomalous values, for maps that do not fit
    in memory together."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.n_total = values.size

    def below(self, v: np.ndarray, side: str) -> np.ndarray:
        """#pixels < v (side='left') or <= v (side='right'), int64."""
        return np.searchsorted(self.values, v, side=side).astype(np.int64, copy=False)

    def candidates(self) -> np.ndarray:
        """Sorted values among which the tie group that crosses a false-positive rate is
        searched (it is always a normal pixel's value; anomalous ones in between do no harm)."""
        return self.values

    def thresholds_from(self, u_star: np.ndarray | None, curve_points: int | None,
                        a_sorted: np.ndarray) -> np.ndarray:
        """The distinct values >= u_star (all when None), descending, thinned to about
        ``curve_points`` by rank among all pixels; the first and last value always stay."""
        first = 0 if u_star is None else int(np.searchsorted(self.values, u_star, side="left")[0])
        tail = self.values[first:]
        if curve_points is not None and tail.size > max(curve_points, 2):
            picks = np.linspace(0, tail.size - 1, max(curve_points, 2)).round().astype(np.int64)
            tail = tail[np.unique(picks)]
        return np.unique(tail)[::-1]


def sort_anomalous(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The anomalous pixels' values ascending and each one's PRO weight 1 / (|C| * K), from
    ``parts`` = [values, component index, component sizes] as `anomalous_pixels` gives them.
    ``parts`` is emptied, so the unsorted values are freed as soon as they are sorted."""
    a_values, a_component, sizes = parts
    parts.clear()
    order = np.argsort(a_values)
    a_sorted = a_values[order]
    del a_values
    weight_of_component = 1.0 / (sizes.astype(np.float64) * sizes.size)
    return a_sorted, weight_of_component[a_component[order]]


class PixelRanks:
    """The pixels' values (a `SortedPixels` or the same interface), the anomalous ones sorted
    apart with their PRO weights, and the counting searches the pixel metrics are built from."""

    def __init__(self, pixels: Any, a_sorted: np.ndarray, w_sorted: np.ndarray) -> None:
        self.pixels = pixels
        self.n_total = int(pixels.n_total)
        self.a_sorted = a_sorted
        self.w_sorted = w_sorted
        self.n_anom = a_sorted.size
        self.n_norm = self.n_total - self.n_anom

    @classmethod
    def of_maps(cls, maps: np.ndarray, masks: np.ndarray) -> PixelRanks | None:
        """The ranks of [N,H,W] maps and masks; None when there is no anomalous or no normal pixel."""
        parts = list(anomalous_pixels(maps, masks))
        if parts[0].size == 0 or parts[0].size == maps.size:
            return None
        # The one full-size copy of the maps.
        all_sorted = np.sort(maps, axis=None)
        if all_sorted.dtype.kind == "f" and np.isnan(all_sorted[-1]):  # NaN sorts last
            raise ValueError("anomaly maps contain NaN")
        a_sorted, w_sorted = sort_anomalous(parts)
        return cls(SortedPixels(all_sorted), a_sorted, w_sorted)

    def normals_below(self, v: np.ndarray, side: str) -> np.ndarray:
        """#normal pixels < v (side='left') or <= v (side='right')."""
        below = self.pixels.below(v, side)
        below -= np.searchsorted(self.a_sorted, v, side=side)
        return below

    def crossing_group(self, max_fpr: float) -> np.ndarray | None:
        """The tie group of normal pixels that straddles FPR = max_fpr (as a 1-element array).

        FPR(v) = #normals >= v / n_norm. Groups u with #normals >= u <= k lie fully inside the
        integration range; the crossing group is the highest value with more than k normals at
        or above it."""
        k = math.floor(max_fpr * self.n_norm)
        if k >= self.n_norm:
            return None
        values = self.pixels.candidates()
        lo, hi = 0, values.size - 1  # invariant: true at lo (all normals >= min)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.n_norm - int(self.normals_below(values[mid:mid + 1], "left")[0]) > k:
                lo = mid
            else:
                hi = mid - 1
        return values[lo:lo + 1]

    def rank_sums(self, bases: Sequence[int]) -> tuple[int, list[float], float]:
        """Over anomalous pixels a: sum of (#normals < a) + (#normals <= a), for each base the PRO
        area of the normal pixels above it (those fully inside an integration range), and the
        average precision (mean over a of the precision at threshold a, see pixel_metrics)."""
        rank_sum, areas, precision_sum = 0, [0.0] * len(bases), 0.0
        for start in range(0, self.n_anom, _CHUNK):
            a = self.a_sorted[start:start + _CHUNK]  # ascending: the searches walk forward
            n_lt = self.pixels.below(a, "left")
            anom_lt = np.searchsorted(self.a_sorted, a, side="left")
            # precision at threshold a: anomalous >= a over all >= a (both >= 1: a itself)
            precision = np.subtract(self.n_anom, anom_lt, dtype=np.float64)
            precision /= self.n_total - n_lt
            precision_sum += float(precision.sum())
            del precision
            n_lt -= anom_lt  # all < a minus anomalous < a: the normals below a, as normals_below
            del anom_lt
            n_le = self.normals_below(a, "right")
            rank_sum += int(n_lt.sum()) + int(n_le.sum())
            weights = self.w_sorted[start:start + _CHUNK]
            for i, base in enumerate(bases):
                last = i == len(bases) - 1  # the last base may work in place
                lt, le = (n_lt, n_le) if last else (n_lt.copy(), n_le.copy())
                # Normal pixels above the base and below (or at) a: each contributes w_a / 2 for
                # PRO(>= v) and w_a / 2 for PRO(> v) over width 1 / n_norm.
                np.subtract(lt, base, out=lt)
                np.maximum(lt, 0, out=lt)
                np.subtract(le, base, out=le)
                np.maximum(le, 0, out=le)
                lt += le
                areas[i] += float(np.dot(weights, lt))
        return rank_sum, [area / (2.0 * self.n_norm) for area in areas], precision_sum / self.n_anom

    def make_pro(self) -> None:
        """prefix[j] = weight of a_sorted[:j]; the PRO at a threshold whose insertion point into
        a_sorted is j is total - prefix[j]. Built after rank_sums so its memory does not add to
        that loop's temporaries."""
        self.prefix = np.empty(self.n_anom + 1)
        self.prefix[0] = 0.0
        np.cumsum(self.w_sorted, out=self.prefix[1:])
        del self.w_sorted
        self.total = self.prefix[-1]

    def pro_at(self, v: np.ndarray, side: str) -> np.ndarray:
        """PRO at threshold v counting values >= v (side='left') or > v ('right')."""
        return self.total - self.prefix[np.searchsorted(self.a_sorted, v, side=side)]


def _pro_curve(r: PixelRanks, u_star: np.ndarray | None, max_fpr: float, pro_at_max: float,
               curve_points: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The PRO curve from (0, 0) to FPR = max_fpr, every point exactly on the curve."""
    thresholds = r.pixels.thresholds_from(u_star, curve_points, r.a_sorted)  # descending, u_star last
    fpr_ge = (r.n_norm - r.normals_below(thresholds, "left")) / r.n_norm
    fpr_gt = (r.n_norm - r.normals_below(thresholds, "right")) / r.n_norm
    # Each threshold contributes both ends of its segment: (FPR(>u), PRO(>u))
    # and (FPR(>=u), PRO(>=u)).
    fpr = np.r_[0.0, np.column_stack([fpr_gt, fpr_ge]).reshape(-1)]
    pro = np.r_[0.0, np.column_stack([r.pro_at(thresholds, "right"), r.pro_at(thresholds, "left")]).reshape(-1)]
    if u_star is not None:
        # The last point (FPR(>=u_star), PRO(>=u_star)) lies beyond max_fpr:
        # replace it by the interpolated point at max_fpr.
        fpr[-1] = max_fpr
        pro[-1] = pro_at_max
    return fpr, pro


def _crossing_area(r: PixelRanks, u_star: np.ndarray, base: int, max_fpr: float) -> tuple[float, float]:
    """The area of the straddling tie group up to max_fpr (linearly interpolated) and the PRO there."""
    fpr_lo = (r.n_norm - base) / r.n_norm  # FPR just above u_star
    fpr_hi = (r.n_norm - int(r.normals_below(u_star, "left")[0])) / r.n_norm
    pro_gt = float(r.pro_at(u_star, "right")[0])
    pro_ge = float(r.pro_at(u_star, "left")[0])
    width = max(max_fpr - fpr_lo, 0.0)
    pro_at_max = pro_gt + (pro_ge - pro_gt) * width / (fpr_hi - fpr_lo)
    return width * (pro_gt + pro_at_max) / 2.0, pro_at_max


def ranked_pixel_metrics(r: PixelRanks, max_fprs: Sequence[float],
                         curve_points: int | None = 0) -> dict[str, Any]:
    """Pixel AUROC, pixel AP, the AUPRO up to each of ``max_fprs`` (normalised) and the PRO curve
    of the first one, from ranks (see pixel_metrics). Returns dict(pixel_auroc, pixel_ap,
    aupros: list, pro_curve); ``r`` is used up (its PRO weights become prefix sums)."""
    for max_fpr in max_fprs:
        _check_max_fpr(max_fpr)
    crossings = [r.crossing_group(max_fpr) for max_fpr in max_fprs]
    # Normal pixels <= u_star are outside the fully included range.
    bases = [0 if u_star is None else int(r.normals_below(u_star, "right")[0]) for u_star in crossings]
    rank_sum, areas, pixel_ap = r.rank_sums(bases)
    pixel_auroc = rank_sum / (2.0 * r.n_anom * r.n_norm)
    r.make_pro()
    aupros, curve = [], None
    for i, (max_fpr, u_star, base, area) in enumerate(zip(max_fprs, crossings, bases, areas)):
        pro_at_max = 0.0
        if u_star is not None:  # the straddling group, linearly interpolated at max_fpr
            extra, pro_at_max = _crossing_area(r, u_star, base, max_fpr)
            area += extra
        aupros.append(area / max_fpr)
        if i == 0 and curve_points != 0:
            curve = _pro_curve(r, u_star, max_fpr, pro_at_max, curve_points)
    return {"pixel_auroc": pixel_auroc, "pixel_ap": pixel_ap, "aupros": aupros, "pro_curve": curve}


def pixel_metrics(
    maps: Any,
    masks: Any,
    max_fpr: float = 0.3,
    curve_points: int | None = 2000,
) -> dict[str, Any]:
    """Pixel AUROC, pixel AP, AUPRO up to `max_fpr` (normalised) and the PRO curve, from one sort.

    Returns dict(pixel_auroc, pixel_ap, aupro, pro_curve) where pro_curve = (fpr, pro)
    float64 arrays from (0, 0) to FPR = max_fpr. Every returned point lies
    exactly on the PRO curve; with curve_points=None all vertices are returned
    (the trapezoid over them equals aupro * max_fpr), otherwise the thresholds
    are thinned to about `curve_points` for plotting, and 0 skips the curve
    (pro_curve is None). All values are None when there is no anomalous or no
    normal pixel.
    """
    _check_max_fpr(max_fpr)
    maps, masks = _check_maps_masks(maps, masks)
    r = PixelRanks.of_maps(maps, masks)
    if r is None:
        return {"pixel_auroc": None, "pixel_ap": None, "aupro": None, "pro_curve": None}
    out = ranked_pixel_metrics(r, [max_fpr], curve_points)
    return {"pixel_auroc": out["pixel_auroc"], "pixel_ap": out["pixel_ap"], "aupro": out["aupros"][0],
            "pro_curve": out["pro_curve"]}


def pixel_auroc(maps: Any, masks: Any) -> float | None:
    """Pixel-level AUROC over all pixels of all maps; None without both classes."""
    return pixel_metrics(maps, masks, curve_points=0)["pixel_auroc"]


def aupro(maps: Any, masks: Any, max_fpr: float = 0.3) -> float | None:
    """Area under the PRO curve up to `max_fpr`, divided by `max_fpr` (docs/method.md §7)."""
    return pixel_metrics(maps, masks, max_fpr=max_fpr, curve_points=0)["aupro"]


# ---------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------

def compute_metrics(
    scores: Any,
    labels: Any,
    maps: Any | None = None,
    masks: Any | None = None,
    max_fpr: float = 0.3,
) -> dict[str, float | None]:
    """All reported metrics of one category; None where a metric is undefined.

    Keys: image_auroc, image_ap, image_f1_max, image_f1_threshold, pixel_auroc,
    aupro, pixel_ap. Pixel metrics are None when maps or masks are not given.
    """
    f1 = f1_max(scores, labels)
    result: dict[str, float | None] = {
        "image_auroc": image_auroc(scores, labels),
        "image_ap": image_ap(scores, labels),
        "image_f1_max": None if f1 is None else f1[0],
        "image_f1_threshold": None if f1 is None else f1[1],
        "pixel_auroc": None,
        "aupro": None,
        "pixel_ap": None,
    }
    if maps is not None and masks is not None:
        pixel = pixel_metrics(maps, masks, max_fpr=max_fpr, curve_points=0)
        for key in ("pixel_auroc", "aupro", "pixel_ap"):
            result[key] = pixel[key]
    return result
