"""MVTec AD 2's pixel metrics at each image's own resolution, in bounded memory (docs/mvtec_ad2.md).

MVTec AD 2 (SPEC §11) is evaluated at the images' native resolution: each anomaly map is resized
back from the working size (models/scoring.map_at_size), sizes differ between images and are not
square, and a scenario holds up to ~10⁹ pixels. `native_pixel_metrics` takes the (map, mask)
pairs as a zero-argument callable that returns a fresh iterator, so it can walk the set more than
once, and never holds all the full-resolution maps at once. It returns pixel AUROC, pixel AP (as
scikit-learn's average_precision_score), AU-PRO up to FPR 0.3 and up to FPR 0.05 (SPEC §7's PRO,
each normalised by its limit), SegF1 at given thresholds, and says whether the values are exact.

SegF1 (SPEC §11): the F1 of the binary segmentation `segment` (anomalous where map >= threshold, the
rule of metrics.f1_max; a `Threshold` keeps its own rule: > for the calibrated one), with TP, FP and
FN summed over every pixel of every image (pooled, not averaged per image). Always exact: counts.

Both paths reuse utils/evaluation/metrics.py's machinery (`anomalous_pixels`, 8-connected
components, `PixelRanks`, `ranked_pixel_metrics`); they differ only in how the pixel values are held.

* In memory (exact): when the values fit the memory budget, the first pass copies them into one
  array, sorted in place: the numbers of metrics.pixel_metrics on the same pixels. Memory:
  n_pixels * itemsize + about 48 bytes per anomalous pixel + a few copies of the largest image.
* Streamed: otherwise. The anomalous pixels (defects are small) are kept exactly with their
  component ids; the normal ones are only counted, per image, in the slots that a sorted set of
  edges (anomalous values) cuts the value axis into: below, at and between edges. Every metric
  sees the normal pixels only through how many lie below or at each anomalous value, so when every
  distinct anomalous value is an edge (at most ``max_edges`` of them) the result is exact. Memory:
  about 48 bytes per anomalous pixel + 160 bytes per edge + a few copies of the largest image,
  whatever the number of normal pixels; more anomalous pixels than the budget allows is one clear
  error. Time: each pass sorts every image's normal pixels once (np.sort) and looks the edges up
  in them.

With fewer edges than distinct anomalous values, the normals of an open slot that also holds
anomalous pixels are not ordered against them. The metrics are then those of one arrangement
consistent with the counts (each slot's normals at its bottom), and a bound on the error against
ANY consistent arrangement, the true one included, comes with them. Proof: take the open slot j
between edges, holding n_j anomalous pixels of PRO weight W_j and c_j normal ones, with G_j normal
pixels above it (N_a anomalous, N_n normal in all). Everything outside open slots (values at edges,
anomalous values, components) is fixed; for an anomalous pixel a of slot j, #normals < a and
#normals <= a each lie in [N_n - G_j - c_j, N_n - G_j], and #normals >= a in [G_j, G_j + c_j]. So

* pixel AUROC = sum_a (#n < a + #n <= a) / (2 N_a N_n) moves by at most sum_j n_j c_j / (N_a N_n);
* pixel AP = (1 / N_a) sum_a A_a / (A_a + #n >= a), with A_a = #anomalous >= a exact, moves by at
  most (1 / N_a) sum_{a in open slots} [A_a / (A_a + G_j) - A_a / (A_a + G_j + c_j)];
* the PRO curve runs, inside slot j, monotonically from (F_j, P_j) to (F_j + c_j / N_n, P_j + W_j)
  (F_j = G_j / N_n, P_j the fixed PRO above the slot), the rest of it is fixed; the area under it
  over a width w of FPR inside the slot lies in [w P_j, w (P_j + W_j)], interpolation at the limit
  included. AU-PRO up to f moves by at most sum_j W_j w_j(f) / f, with w_j(f) the width of
  [F_j, F_j + c_j / N_n] inside [0, f].

The computed arrangement and the true one are both consistent, so |computed - exact| <= bound.
Where a bound exceeds ``tolerance`` (default 1e-3), the slots that carry it are cut at more
anomalous values and the normals counted again (one more pass), until every bound is within it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
from tqdm import tqdm

from utils.core.errors import TransFusionError
from utils.evaluation.metrics import PixelRanks, SortedPixels, anomalous_pixels, ranked_pixel_metrics, sort_anomalous
from utils.run.thresholds import Threshold

# The (map, mask) pairs of a scenario's test images, each call a fresh pass; an item may carry a
# third element, the image's name, which errors then name.
Pairs = Callable[[], Iterable[tuple[Any, ...]]]

DEFAULT_MEMORY_BUDGET = 4 * 2 ** 30  # bytes the metrics may use for one scenario (issue 25)
DEFAULT_TOLERANCE = 1e-3             # largest error of a streamed, not exact, metric
DEFAULT_MAX_EDGES = 1 << 18          # edges of the first streamed pass: exact up to this many anomalous values
DEFAULT_MAX_PASSES = 12              # streamed passes over the pairs before giving up on the tolerance
MAX_FPRS = {"aupro": 0.3, "aupro_005": 0.05}  # AU-PRO limits: MVTec AD's and MVTec AD 2's
BASELINE_STDS = 3.0                  # the MVTec AD 2 authors' threshold: mean + 3 std of validation maps
_METRICS = ("pixel_auroc", "pixel_ap", *MAX_FPRS)

# Memory per anomalous pixel (values, component ids, sort order, PRO weights), per edge of the
# streamed path (its counts, bounds and slots) and per pixel of the largest image (the caller's
# pair and the copies made of it).
_IN_MEMORY_BYTES_PER_ANOMALOUS = 48
_STREAMED_BYTES_PER_ANOMALOUS = 48
_BYTES_PER_EDGE = 160
_BYTES_PER_IMAGE_PIXEL = 40
_CHUNK = 1 << 18


# ---------------------------------------------------------------------------
# Thresholds and SegF1
# ---------------------------------------------------------------------------

def _rule(threshold: float | Threshold) -> tuple[float, bool]:
    """(value, strict): a plain number is the F1-max rule (>=), a Threshold its own."""
    if isinstance(threshold, Threshold):
        value, strict = threshold.value, threshold.strict
    else:
        value, strict = threshold, False
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value):
        raise TransFusionError(f"a SegF1 threshold must be a finite number or a Threshold, got {threshold!r}")
    return float(value), strict


def segment(anomaly_map: Any, threshold: float | Threshold) -> np.ndarray:
    """The binary segmentation SegF1 scores: True where map >= threshold (a number: the F1-max
    rule, metrics.f1_max), or by a `Threshold`'s own rule (> for the calibrated one)."""
    value, strict = _rule(threshold)
    m = np.asarray(anomaly_map)
    return m > value if strict else m >= value


@dataclass(frozen=True)
class SegF1:
    """F1 of one binary segmentation over all pixels of all images pooled; None where undefined."""

    threshold: float
    rule: str                 # ">=" or ">": anomalous when map <rule> threshold
    f1: float | None          # 2TP / (2TP + FP + FN); None when TP + FP + FN = 0
    precision: float | None   # TP / (TP + FP); None without a predicted anomalous pixel
    recall: float | None      # TP / (TP + FN); None without an anomalous pixel
    tp: int
    fp: int
    fn: int

    @staticmethod
    def of_counts(threshold: float | Threshold, tp: int, fp: int, fn: int) -> SegF1:
        """SegF1 from the pooled counts."""
        value, strict = _rule(threshold)
        return SegF1(value, ">" if strict else ">=", 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
                     tp / (tp + fp) if tp + fp else None, tp / (tp + fn) if tp + fn else None, tp, fp, fn)


# ---------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class NativeMetrics:
    """The pixel metrics of one scenario at native resolution; None where undefined (no anomalous
    or no normal pixel). ``exact``: every value is the exact metric; otherwise each lies within
    ``error_bounds[name]`` (<= the tolerance) of it. ``path``: "in-memory" or "streamed";
    ``passes``: how many times the pairs were walked."""

    pixel_auroc: float | None
    pixel_ap: float | None
    aupro: float | None        # AU-PRO up to FPR 0.3, / 0.3 (metrics.pixel_metrics)
    aupro_005: float | None    # AU-PRO up to FPR 0.05, / 0.05 (MVTec AD 2)
    seg_f1: dict[str, SegF1]
    n_images: int
    n_pixels: int
    n_anomalous: int
    exact: bool
    path: str
    passes: int
    error_bounds: dict[str, float] = field(default_factory=dict)
    pro_curve: tuple[np.ndarray, np.ndarray] | None = None  # up to FPR 0.3, with curve_points

    @property
    def error_bound(self) -> float:
        """The largest error bound of the four curve metrics (0.0 when exact)."""
        return max(self.error_bounds.values(), default=0.0)

    def as_dict(self) -> dict[str, Any]:
        """Ready for json.dumps (the PRO curve as lists)."""
        out = asdict(self)
        out["seg_f1"] = {name: asdict(s) for name, s in self.seg_f1.items()}
        out["error_bound"] = self.error_bound
        if self.pro_curve is not None:
            out["pro_curve"] = [self.pro_curve[0].tolist(), self.pro_curve[1].tolist()]
        return out


# ---------------------------------------------------------------------------
# Pass 1: sizes, anomalous pixels, SegF1 counts, and the values while they fit
# ---------------------------------------------------------------------------

def _pair(item: Any, i: int) -> tuple[np.ndarray, np.ndarray, str]:
    """One checked (float map, bool mask, name) of the stream."""
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise TransFusionError(f"image {i}: the pairs must be (anomaly map, mask) or (map, mask, name), "
                               f"got a {type(item).__name__}")
    name = str(item[2]) if len(item) == 3 else f"image {i}"
    m, g = np.asarray(item[0]), np.asarray(item[1])
    if m.ndim != 2 or g.shape != m.shape:
        raise TransFusionError(f"{name}: anomaly map {list(m.shape)} and mask {list(g.shape)} must be the same "
                               f"H x W (resize the map to its image's size: models.scoring.map_at_size)")
    if m.dtype.kind not in "fiu":
        raise TransFusionError(f"{name}: the anomaly map must be numbers, got {m.dtype}")
    if m.dtype.kind != "f":
        m = m.astype(np.float64)
    if not np.isfinite(m).all():
        raise TransFusionError(f"{name}: the anomaly map holds NaN or inf")
    return m, (g if g.dtype == bool else g != 0), name


def _size(n_bytes: float) -> str:
    """Bytes in words: GiB, MiB or kB."""
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{n_bytes / 1024:.1f} kB"


@dataclass
class _Survey:
    """What the first pass learns."""

    shapes: list[tuple[int, int]] = field(default_factory=list)
    n_anomalous: list[int] = field(default_factory=list)
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float16))
    parts: list[np.ndarray] = field(default_factory=list)  # anomalous values, component ids, sizes
    kept: _Blocks | None = None  # every value, while they fit
    counts: dict[str, list[int]] = field(default_factory=dict)  # threshold name -> [tp, fp, fn]
    n_total: int = 0
    n_anom: int = 0
    max_pixels: int = 0


def _survey(pairs: Pairs, thresholds: Mapping[str, float | Threshold], budget: int, path: str, max_edges: int,
            progress: bool) -> _Survey:
    """Pass 1: every image's size, its anomalous pixels with their components (ids over the whole
    set), the SegF1 counts, and a copy of every value while they fit the budget (path "auto"),
    always ("in-memory") or never ("streamed")."""
    s = _Survey(counts={name: [0, 0, 0] for name in thresholds})
    values: list[np.ndarray] = []
    components: list[np.ndarray] = []
    sizes: list[np.ndarray] = []
    n_components = 0
    s.kept = None if path == "streamed" else _Blocks()
    for i, item in enumerate(tqdm(pairs(), desc="pixel metrics, pass 1", disable=not progress, leave=False)):
        m, g, name = _pair(item, i)
        a_values, a_component, a_sizes = anomalous_pixels(m[None], g[None])
        a_component += n_components
        n_components += a_sizes.size
        values.append(a_values)
        components.append(a_component)
        sizes.append(a_sizes)
        for key, threshold in thresholds.items():
            predicted = segment(m, threshold)
            tp = int(np.count_nonzero(predicted & g))
            c = s.counts[key]
            c[0] += tp
            c[1] += int(np.count_nonzero(predicted)) - tp
            c[2] += a_values.size - tp
            del predicted
        s.shapes.append(m.shape)
        s.n_anomalous.append(a_values.size)
        s.dtype = np.result_type(s.dtype, m.dtype)
        s.n_total += m.size
        s.n_anom += a_values.size
        s.max_pixels = max(s.max_pixels, m.size)
        transient = _BYTES_PER_IMAGE_PIXEL * s.max_pixels
        if s.kept is not None:
            if path == "in-memory" or \
                    s.n_total * s.dtype.itemsize + _IN_MEMORY_BYTES_PER_ANOMALOUS * s.n_anom + transient <= budget:
                s.kept.append(m)
            else:
                s.kept = None  # from here on, streamed
        need = _STREAMED_BYTES_PER_ANOMALOUS * s.n_anom + _BYTES_PER_EDGE * min(s.n_anom, max_edges) + transient
        if s.kept is None and need > budget:
            raise TransFusionError(
                f"the pixel metrics keep every anomalous pixel exactly; the {s.n_anom:,} up to {name} "
                f"need about {_size(need)}, more than the memory budget of {_size(budget)}: raise memory_budget")
    dtype = s.dtype
    s.parts = [np.concatenate(values).astype(dtype, copy=False) if values else np.empty(0, dtype),
               np.concatenate(components) if components else np.empty(0, np.int32),
               np.concatenate(sizes) if sizes else np.empty(0, np.int64)]
    return s


# ---------------------------------------------------------------------------
# The in-memory path
# ---------------------------------------------------------------------------

class _Blocks:
    """Every value seen, copied into blocks that grow to 2**23 values (large blocks are their own
    memory maps, returned to the system when freed), so growing never copies what is held and
    `sorted_values` needs the values plus one block, not twice the values."""

    LARGEST = 1 << 23

    def __init__(self) -> None:
        self.blocks: list[np.ndarray | None] = []
        self.room = 0  # free values at the end of the last block
        self.n = 0
        self.dtype = np.dtype(np.float16)

    def append(self, values: np.ndarray) -> None:
        """Copy ``values`` in (widening what is held when their dtype is wider)."""
        dtype = np.result_type(self.dtype, values.dtype)
        if dtype != self.dtype:
            for i, block in enumerate(self.blocks):
                self.blocks[i] = None if block is None else block.astype(dtype)
            self.dtype = dtype
        flat = values.reshape(-1)
        pos = 0
        while pos < flat.size:
            if self.room == 0:
                size = min(self.LARGEST, 1 << (20 + len(self.blocks)))
                self.blocks.append(np.empty(size, dtype=dtype))
                self.room = size
            block = self.blocks[-1]
            assert block is not None
            take = min(self.room, flat.size - pos)
            start = block.size - self.room
            block[start:start + take] = flat[pos:pos + take]
            pos += take
            self.room -= take
            self.n += take

    def sorted_values(self) -> np.ndarray:
        """All values in one array, sorted in place; the blocks are freed one by one."""
        out = np.empty(self.n, dtype=self.dtype)
        pos = 0
        for i, block in enumerate(self.blocks):
            assert block is not None
            take = min(block.size, self.n - pos)
            out[pos:pos + take] = block[:take]
            pos += take
            self.blocks[i] = None
        self.blocks, self.room, self.n = [], 0, 0
        out.sort()
        return out


def _in_memory_ranks(s: _Survey) -> PixelRanks:
    """The ranks over one sorted array of every value (metrics.pixel_metrics' way)."""
    assert s.kept is not None
    values = s.kept.sorted_values()
    s.kept = None
    a_sorted, w_sorted = sort_anomalous(s.parts)
    return PixelRanks(SortedPixels(values), a_sorted, w_sorted)


# ---------------------------------------------------------------------------
# The streamed path: slots between edges
# ---------------------------------------------------------------------------

class SlotPixels:
    """The streamed path's pixels for `PixelRanks` (the interface of metrics.SortedPixels): the
    normal pixels of each slot as one tie group at one value inside it (at an edge, the edge;
    between edges e_{j-1} < e_j, the next representable value above e_{j-1}, which no normal pixel
    of the slot lies below), and the anomalous pixels exactly."""

    def __init__(self, edges: np.ndarray, at: np.ndarray, between: np.ndarray, a_sorted: np.ndarray) -> None:
        m = edges.size
        values = np.empty(2 * m + 1, dtype=edges.dtype)
        values[1::2] = edges
        values[0] = np.nextafter(edges[0], np.array(-np.inf, dtype=edges.dtype))
        values[2::2] = np.nextafter(edges, np.full(m, np.inf, dtype=edges.dtype))
        counts = np.empty(2 * m + 1, dtype=np.int64)
        counts[1::2] = at
        counts[0::2] = between
        keep = counts > 0  # an empty slot may have no value strictly inside it
        self.values = values[keep]
        self.cum = np.r_[np.int64(0), np.cumsum(counts[keep])]
        self.a_sorted = a_sorted
        self.n_total = int(self.cum[-1]) + a_sorted.size

    def below(self, v: np.ndarray, side: str) -> np.ndarray:
        """#pixels < v (side='left') or <= v (side='right'), int64."""
        out = self.cum[np.searchsorted(self.values, v, side=side)]
        out += np.searchsorted(self.a_sorted, v, side=side)
        return out

    def candidates(self) -> np.ndarray:
        """The normal pixels' values: the crossing tie group is one of them."""
        return self.values

    def thresholds_from(self, u_star: np.ndarray | None, curve_points: int | None,
                        a_sorted: np.ndarray) -> np.ndarray:
        """The distinct values >= u_star (all when None), descending, thinned to about
        ``curve_points``; the first and last value always stay."""
        lo_n = 0 if u_star is None else int(np.searchsorted(self.values, u_star, side="left")[0])
        lo_a = 0 if u_star is None else int(np.searchsorted(a_sorted, u_star, side="left")[0])
        tail = np.unique(np.concatenate([self.values[lo_n:], a_sorted[lo_a:]]))
        if curve_points is not None and tail.size > max(curve_points, 2):
            tail = tail[np.unique(np.linspace(0, tail.size - 1, max(curve_points, 2)).round().astype(np.int64))]
        return tail[::-1]


def _first_edges(a_sorted: np.ndarray, w_sorted: np.ndarray, max_edges: int) -> np.ndarray:
    """Every distinct anomalous value when there are at most ``max_edges`` (exact), else the
    quantiles of the anomalous pixels by count and by PRO weight, half each, min and max included."""
    distinct = np.r_[True, a_sorted[1:] != a_sorted[:-1]]
    if int(np.count_nonzero(distinct)) <= max_edges:
        return a_sorted[distinct]
    del distinct
    half = max(max_edges // 2, 1)
    by_count = np.linspace(0, a_sorted.size - 1, half).round().astype(np.int64)
    cum_weight = np.cumsum(w_sorted)
    by_weight = np.minimum(np.searchsorted(cum_weight, np.linspace(0.0, cum_weight[-1], half)), a_sorted.size - 1)
    del cum_weight
    return np.unique(a_sorted[np.r_[by_count, by_weight, 0, a_sorted.size - 1]])


def _walk(pairs: Pairs, s: _Survey, desc: str, progress: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A later pass over the pairs, checked against what pass 1 saw."""
    n = 0
    for i, item in enumerate(tqdm(pairs(), desc=desc, total=len(s.shapes), disable=not progress, leave=False)):
        m, g, name = _pair(item, i)
        if i >= len(s.shapes) or m.shape != s.shapes[i] or int(np.count_nonzero(g)) != s.n_anomalous[i]:
            raise TransFusionError(f"{name}: the pairs changed between passes (pass 1 saw {len(s.shapes)} images; "
                                   f"this one differs in size or mask): pairs() must give the same set each call")
        n += 1
        yield m, g
    if n != len(s.shapes):
        raise TransFusionError(f"the pairs changed between passes: pass 1 saw {len(s.shapes)} images, this pass {n}")


def _count_normals(pairs: Pairs, s: _Survey, edges: np.ndarray, desc: str,
                   progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """One pass: the normal pixels at each edge (``at``, m) and in each open slot between
    (``between``, m + 1: below the first edge, between consecutive ones, above the last)."""
    at = np.zeros(edges.size, dtype=np.int64)
    between = np.zeros(edges.size + 1, dtype=np.int64)
    for m, g in _walk(pairs, s, desc, progress):
        normals = m[~g] if g.any() else m.reshape(-1).copy()  # a copy of our own: sorted in place
        normals = normals.astype(s.dtype, copy=False)
        normals.sort()
        left = np.searchsorted(normals, edges, side="left")
        right = np.searchsorted(normals, edges, side="right")
        at += right - left
        between[0] += left[0]
        between[1:-1] += left[1:] - right[:-1]
        between[-1] += normals.size - right[-1]
    return at, between


@dataclass
class _Bounds:
    """Each metric's error bound per live open slot (one holding anomalous AND normal pixels: the
    others add nothing; docstring of the module), and every open slot's anomalous content."""

    live: np.ndarray                 # indices of the live open slots (into ``between``)
    per_slot: dict[str, np.ndarray]  # metric name -> bound of each live slot
    n_inside: np.ndarray             # anomalous pixels strictly inside each open slot
    w_inside: np.ndarray             # their PRO weight

    def totals(self) -> dict[str, float]:
        return {name: float(b.sum()) for name, b in self.per_slot.items()}


def _inside(edges: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For anomalous values ``a``: the open slot of each (index into ``between``) and whether it is
    inside one (not at an edge)."""
    slot = np.searchsorted(edges, a, side="left")
    return slot, edges[np.minimum(slot, edges.size - 1)] != a


def _anomalous_inside(edges: np.ndarray, a_sorted: np.ndarray, w_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Count and PRO weight of the anomalous pixels strictly inside each open slot."""
    n_inside = np.zeros(edges.size + 1, dtype=np.int64)
    w_inside = np.zeros(edges.size + 1)
    for start in range(0, a_sorted.size, _CHUNK):
        slot, inside = _inside(edges, a_sorted[start:start + _CHUNK])
        n_inside += np.bincount(slot[inside], minlength=edges.size + 1)
        w_inside += np.bincount(slot[inside], weights=w_sorted[start:start + _CHUNK][inside], minlength=edges.size + 1)
    return n_inside, w_inside


def _error_bounds(edges: np.ndarray, at: np.ndarray, between: np.ndarray, a_sorted: np.ndarray,
                  w_sorted: np.ndarray) -> _Bounds:
    """The bounds of the module's docstring, per live open slot."""
    n_anom = a_sorted.size
    n_norm = int(at.sum() + between.sum())
    n_inside, w_inside = _anomalous_inside(edges, a_sorted, w_sorted)
    live = np.flatnonzero((n_inside > 0) & (between > 0))
    # G_j, the normals above open slot j: all but those below, at or inside it
    above = n_norm - np.cumsum(between)[live] - np.r_[np.int64(0), np.cumsum(at)][live]
    c = between[live]
    ap = np.zeros(live.size)
    for start in range(0, n_anom if live.size else 0, _CHUNK):
        a = a_sorted[start:start + _CHUNK]
        slot, inside = _inside(edges, a)
        k = np.minimum(np.searchsorted(live, slot), live.size - 1)
        take = inside & (live[k] == slot)
        k = k[take]
        n_ge = n_anom - np.searchsorted(a_sorted, a[take], side="left")  # A_a, exact
        term = n_ge / (n_ge + above[k]) - n_ge / (n_ge + above[k] + c[k])
        ap += np.bincount(k, weights=term, minlength=live.size)
    per_slot = {"pixel_auroc": n_inside[live].astype(np.float64) * c / (n_anom * n_norm), "pixel_ap": ap / n_anom}
    f_top = above / n_norm
    f_bottom = f_top + c / n_norm
    for name, f in MAX_FPRS.items():
        width = np.clip(np.minimum(f_bottom, f) - f_top, 0.0, None)
        per_slot[name] = w_inside[live] * width / f
    return _Bounds(live, per_slot, n_inside, w_inside)


def _cuts_per_slot(bounds: _Bounds, tolerance: float) -> np.ndarray:
    """How many parts to cut each open slot into: for each metric whose bound is over half the
    tolerance, the live slots carrying all but a quarter of it, each into enough parts to bring its
    share down to about that quarter over their number."""
    cuts = np.ones(bounds.n_inside.size, dtype=np.int64)
    for contribution in bounds.per_slot.values():
        total = float(contribution.sum())
        if total <= tolerance / 2:
            continue
        order = np.argsort(contribution)[::-1]
        covered = np.cumsum(contribution[order])
        k = min(int(np.searchsorted(covered, total - tolerance / 4, side="left")) + 1, order.size)
        picked = order[:k]
        picked = picked[contribution[picked] > 0]
        need = np.ceil(4.0 * contribution[picked] * picked.size / tolerance).astype(np.int64)
        slots = bounds.live[picked]
        cuts[slots] = np.maximum(cuts[slots], np.maximum(need, 2))
    # more parts than 2 n_inside make every pixel inside an edge already (each share is >= 1 / (2 n))
    return np.minimum(cuts, 2 * bounds.n_inside + 2)


def _refined_edges(edges: np.ndarray, bounds: _Bounds, a_sorted: np.ndarray, w_sorted: np.ndarray,
                   tolerance: float) -> np.ndarray:
    """``edges`` plus anomalous values that cut the slots `_cuts_per_slot` picks into parts of
    about equal share, half by count and half by PRO weight. Every picked slot gains an edge, so
    the refinement ends, at worst with every distinct anomalous value an edge (exact)."""
    cuts = _cuts_per_slot(bounds, tolerance)
    nonempty = bounds.n_inside > 0
    shares_before = np.cumsum(nonempty) - nonempty  # each non-empty slot's shares sum to 1
    new: list[np.ndarray] = [edges]
    carry = 0.0
    for start in range(0, a_sorted.size, _CHUNK):
        a = a_sorted[start:start + _CHUNK]
        slot, inside = _inside(edges, a)
        a, slot, weight = a[inside], slot[inside], w_sorted[start:start + _CHUNK][inside]
        share = 0.5 / bounds.n_inside[slot] + 0.5 * weight / bounds.w_inside[slot]
        end = carry + np.cumsum(share)
        carry = float(end[-1]) if end.size else carry
        end -= shares_before[slot]
        parts = cuts[slot]
        # a pixel whose share spans one of the cut points k / parts becomes an edge
        crosses = np.floor(end * parts) > np.floor((end - share) * parts)
        new.append(a[(parts > 1) & crosses])
    return np.unique(np.concatenate(new))


def _streamed_ranks(pairs: Pairs, s: _Survey, budget: int, tolerance: float, max_edges: int, max_passes: int,
                    progress: bool) -> tuple[PixelRanks, dict[str, float], int]:
    """Edges, normal counts and bounds, refined until every bound is within the tolerance."""
    a_sorted, w_sorted = sort_anomalous(s.parts)
    edges = _first_edges(a_sorted, w_sorted, max_edges)
    for p in range(2, max_passes + 2):
        need = _STREAMED_BYTES_PER_ANOMALOUS * s.n_anom + _BYTES_PER_EDGE * edges.size + \
            _BYTES_PER_IMAGE_PIXEL * s.max_pixels
        if need > budget:
            raise TransFusionError(f"the streamed pixel metrics need {edges.size:,} edges to reach the tolerance "
                                   f"{tolerance:g}, about {_size(need)}, more than the memory budget of {_size(budget)}: "
                                   f"raise memory_budget or tolerance")
        at, between = _count_normals(pairs, s, edges, f"pixel metrics, pass {p}", progress)
        bounds = _error_bounds(edges, at, between, a_sorted, w_sorted)
        totals = bounds.totals()
        if max(totals.values(), default=0.0) <= tolerance:
            return PixelRanks(SlotPixels(edges, at, between, a_sorted), a_sorted, w_sorted), totals, p
        edges = _refined_edges(edges, bounds, a_sorted, w_sorted, tolerance)
        del bounds
    raise TransFusionError(f"the streamed pixel metrics stayed above the tolerance {tolerance:g} after {max_passes} "
                           f"counting passes (bounds {totals}): raise max_passes or max_edges")


# ---------------------------------------------------------------------------
# The entry points
# ---------------------------------------------------------------------------

def _check_options(memory_budget: int, tolerance: float, max_edges: int, max_passes: int, path: str) -> None:
    if path not in ("auto", "in-memory", "streamed"):
        raise ValueError(f"path must be 'auto', 'in-memory' or 'streamed', got {path!r}")
    if memory_budget <= 0 or not tolerance > 0 or max_edges < 2 or max_passes < 1:
        raise ValueError(f"need memory_budget > 0, tolerance > 0, max_edges >= 2 and max_passes >= 1; got "
                         f"{memory_budget}, {tolerance}, {max_edges}, {max_passes}")


def native_pixel_metrics(pairs: Pairs, thresholds: Mapping[str, float | Threshold] | None = None, *,
                         memory_budget: int = DEFAULT_MEMORY_BUDGET, tolerance: float = DEFAULT_TOLERANCE,
                         max_edges: int = DEFAULT_MAX_EDGES, max_passes: int = DEFAULT_MAX_PASSES,
                         path: str = "auto", n_pixels: int | None = None, curve_points: int | None = 0,
                         progress: bool = False) -> NativeMetrics:
    """Pixel AUROC, pixel AP, AU-PRO up to FPR 0.3 and 0.05 and SegF1 over a scenario's test
    images, each at its own resolution (the module's docstring has the method and its proof).

    ``pairs``: a zero-argument callable returning a fresh iterator of (anomaly map H x W, mask
    H x W) pairs, one per image (optionally a third element, its name, for errors); it is called
    once per pass and must give the same set each time. ``thresholds``: name -> threshold for
    SegF1 (a number: anomalous when map >= it; a Threshold: by its rule). ``memory_budget``: the
    bytes the metrics may use, the pair being processed included; ``path``: "auto" (in memory when
    the values fit the budget, else streamed), or force one ("in-memory" ignores the budget);
    ``n_pixels``: the set's pixel count when known beforehand (from the images' headers), so that
    "auto" goes streamed from the start when float64 values could not fit, instead of copying
    values in pass 1 until they overflow the budget.
    ``tolerance``, ``max_edges``, ``max_passes``: the streamed path's error target, first edge
    count and most counting passes. ``curve_points``: the PRO curve up to 0.3, thinned to about
    this many thresholds (None: all; 0: none). ``progress``: a tqdm bar per pass."""
    _check_options(memory_budget, tolerance, max_edges, max_passes, path)
    if path == "auto" and n_pixels is not None and 8 * n_pixels > memory_budget:
        path = "streamed"
    thresholds = dict(thresholds or {})
    for t in thresholds.values():
        _rule(t)
    s = _survey(pairs, thresholds, memory_budget, path, max_edges, progress)
    if not s.shapes:
        raise TransFusionError("the pixel metrics got no images: pairs() gave an empty iterator")
    seg = {name: SegF1.of_counts(thresholds[name], *c) for name, c in s.counts.items()}
    common = dict(seg_f1=seg, n_images=len(s.shapes), n_pixels=s.n_total, n_anomalous=s.n_anom)
    if s.n_anom == 0 or s.n_anom == s.n_total:
        return NativeMetrics(None, None, None, None, exact=True, path="in-memory" if s.kept is not None else "streamed",
                             passes=1, error_bounds={}, **common)
    if s.kept is not None:
        ranks, bounds, passes, how = _in_memory_ranks(s), {name: 0.0 for name in _METRICS}, 1, "in-memory"
    else:
        ranks, bounds, passes = _streamed_ranks(pairs, s, memory_budget, tolerance, max_edges, max_passes, progress)
        how = "streamed"
    out = ranked_pixel_metrics(ranks, list(MAX_FPRS.values()), curve_points)
    aupro, aupro_005 = out["aupros"]
    return NativeMetrics(out["pixel_auroc"], out["pixel_ap"], aupro, aupro_005, exact=max(bounds.values()) == 0.0,
                         path=how, passes=passes, error_bounds=bounds, pro_curve=out["pro_curve"], **common)


def pooled_mean_std(maps: Iterable[Any]) -> tuple[float, float]:
    """Mean and (population) standard deviation over EVERY pixel of ``maps`` (any sizes), streamed
    in float64: each map's mean and sum of squared deviations (two passes over it), merged with
    Chan et al.'s pairwise formula, so no map is held longer than its own step."""
    n, mean, m2 = 0, 0.0, 0.0
    for i, m in enumerate(maps):
        x = np.asarray(m, dtype=np.float64)
        if x.size == 0:
            continue
        if not np.isfinite(x).all():
            raise TransFusionError(f"map {i}: holds NaN or inf; the mean and std need finite maps")
        n_b, mean_b = x.size, float(x.mean())
        m2_b = float(np.square(x - mean_b).sum())
        total = n + n_b
        delta = mean_b - mean
        mean += delta * n_b / total
        m2 += m2_b + delta * delta * (n * n_b / total)
        n = total
    if n == 0:
        raise TransFusionError("the mean and std got no pixels: give at least one non-empty map")
    return mean, math.sqrt(m2 / n)


def baseline_threshold(maps: Iterable[Any], stds: float = BASELINE_STDS) -> float:
    """The MVTec AD 2 authors' baseline SegF1 threshold: mean + 3 std over every pixel of the
    validation images' anomaly maps (`pooled_mean_std`)."""
    mean, std = pooled_mean_std(maps)
    return mean + stds * std
