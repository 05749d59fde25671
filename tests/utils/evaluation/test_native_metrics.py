"""utils.evaluation.native_metrics: MVTec AD 2's pixel metrics at each image's own size.

The expected values come from SPEC §7 / §11's words: a worked example enumerated by hand, and a
slow reference that loops over every distinct threshold (FPR = share of normal pixels >= it,
PRO = mean over 8-connected components of the share of the component >= it, trapezoid up to the
limit with linear interpolation there, divided by the limit), with scikit-learn for AUROC and AP.
"""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from skimage import measure
from sklearn.metrics import average_precision_score, roc_auc_score

from tests.fixtures.fuzzing import fuzz
from utils.core.errors import TransFusionError
from utils.evaluation import metrics
from utils.evaluation import native_metrics as nm
from utils.run.thresholds import Threshold

CURVE = ("pixel_auroc", "pixel_ap", "aupro", "aupro_005")

# ---------------------------------------------------------------------------
# The worked example (two images of different sizes, three components, ties)
# ---------------------------------------------------------------------------

# Image A, 3 x 4: one component C1 = {(0,0): 0.9, (1,1): 0.6}, diagonal neighbours, so ONE
# component with 8-connectivity (two with 4-connectivity).
MAP_A = np.array([[0.9, 0.1, 0.1, 0.2],
                  [0.1, 0.6, 0.1, 0.1],
                  [0.5, 0.1, 0.1, 0.1]])
MASK_A = np.zeros((3, 4), dtype=bool)
MASK_A[0, 0] = MASK_A[1, 1] = True
# Image B, 4 x 3: C2 = {(2,1): 0.7} tied with the normal pixel (2,0) = 0.7, and C3 = {(0,2): 0.4}.
MAP_B = np.array([[0.1, 0.2, 0.4],
                  [0.1, 0.1, 0.1],
                  [0.7, 0.7, 0.2],
                  [0.1, 0.1, 0.1]])
MASK_B = np.zeros((4, 3), dtype=bool)
MASK_B[2, 1] = MASK_B[0, 2] = True
# The 20 normal pixels: 0.7 once, 0.5 once, 0.2 three times, 0.1 fifteen times (one normal = FPR 0.05).


def worked_pairs():
    return iter([(MAP_A, MASK_A), (MAP_B, MASK_B)])


def test_worked_example_by_hand():
    """Thresholds, highest first (FPR, PRO over C1, C2, C3):
    0.9: (0, (1/2 + 0 + 0) / 3 = 1/6); 0.7: (1/20 = 0.05, (1/2 + 1 + 0) / 3 = 1/2), one tie step
    from (0, 1/6); 0.6: (0.05, 2/3); 0.5: (0.10, 2/3); 0.4: (0.10, 1); 0.2: (0.25, 1); 0.1: (1, 1).
    AU-PRO@0.05 = the tie step's trapezoid 0.05 (1/6 + 1/2) / 2, / 0.05 = 1/3 (4-connectivity
    would give 0.375). AU-PRO@0.3 = [0.05 / 3 + 0.05 * 2/3 + 0.2 * 1] / 0.3 = 5/6.
    Pixel AUROC: normals below (+ half the ties) 0.9: 20, 0.7: 19.5, 0.6: 19, 0.4: 18 -> 76.5 / 80.
    Pixel AP: precision 1/1, 2/3, 3/4, 4/6 at recall 1/4 each -> 37/48.
    SegF1 at 0.6 (>=): TP 0.9, 0.7, 0.6 = 3, FP the normal 0.7 = 1, FN 0.4 = 1 -> 6/8; with the
    calibrated rule (> 0.6) the 0.6 pixel is missed: TP 2, FP 1, FN 2 -> 4/7. At 0.7: 4/7 too."""
    calibrated = Threshold(0.6, "calibrated", True, "by hand")
    for path in ("in-memory", "streamed"):
        r = nm.native_pixel_metrics(worked_pairs, {"ge": 0.6, "strict": calibrated, "high": 0.7}, path=path)
        assert r.path == path and r.exact and r.n_images == 2 and r.n_pixels == 24 and r.n_anomalous == 4
        assert r.aupro_005 == pytest.approx(1 / 3, abs=1e-12)
        assert r.aupro == pytest.approx(5 / 6, abs=1e-12)
        assert r.pixel_auroc == pytest.approx(76.5 / 80, abs=1e-12)
        assert r.pixel_ap == pytest.approx(37 / 48, abs=1e-12)
        ge, strict, high = r.seg_f1["ge"], r.seg_f1["strict"], r.seg_f1["high"]
        assert (ge.tp, ge.fp, ge.fn, ge.rule) == (3, 1, 1, ">=") and ge.f1 == pytest.approx(0.75)
        assert ge.precision == pytest.approx(0.75) and ge.recall == pytest.approx(0.75)
        assert (strict.tp, strict.fp, strict.fn, strict.rule) == (2, 1, 2, ">") and strict.f1 == pytest.approx(4 / 7)
        assert (high.tp, high.fp, high.fn) == (2, 1, 2) and high.f1 == pytest.approx(4 / 7)


def test_seg_f1_is_pooled_not_averaged_per_image():
    """Image 1: 1 anomalous pixel caught, 3 false alarms (F1 2/5); image 2: 9 anomalous pixels, all
    caught, no false alarm (F1 1). Pooled: TP 10, FP 3, FN 0 -> 20/23 (the per-image mean is 0.7)."""
    m1, g1 = np.ones((2, 2)), np.zeros((2, 2), dtype=bool)
    g1[0, 0] = True
    m2, g2 = np.ones((3, 5)), np.zeros((3, 5), dtype=bool)
    m2[:, 3:] = 0.0
    g2[:, :3] = True
    r = nm.native_pixel_metrics(lambda: iter([(m1, g1), (m2, g2)]), {"t": 0.5})
    s = r.seg_f1["t"]
    assert (s.tp, s.fp, s.fn) == (10, 3, 0) and s.f1 == pytest.approx(20 / 23)
    assert s.precision == pytest.approx(10 / 13) and s.recall == 1.0


def test_seg_f1_undefined_parts_are_none():
    m, g = np.zeros((3, 3)), np.zeros((3, 3), dtype=bool)
    r = nm.native_pixel_metrics(lambda: iter([(m, g)]), {"above": 1.0, "all": 0.0})
    assert r.pixel_auroc is None and r.aupro_005 is None and r.exact
    above, every = r.seg_f1["above"], r.seg_f1["all"]
    assert (above.f1, above.precision, above.recall) == (None, None, None)
    assert (every.tp, every.fp, every.fn, every.f1, every.precision, every.recall) == (0, 9, 0, 0.0, 0.0, None)


def test_segment_rule_is_the_one_segf1_counts():
    m = np.array([[0.2, 0.5], [0.5, 0.9]])
    assert nm.segment(m, 0.5).tolist() == [[False, True], [True, True]]
    assert nm.segment(m, Threshold(0.5, "calibrated", True, "x")).tolist() == [[False, False], [False, True]]
    with pytest.raises(TransFusionError, match="finite number"):
        nm.segment(m, float("nan"))


# ---------------------------------------------------------------------------
# A slow reference written from SPEC §7 / §11
# ---------------------------------------------------------------------------

def slow_native(maps: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, float]:
    """Every distinct value as a threshold, every component by skimage (8-connectivity)."""
    normals = np.concatenate([m[~g] for m, g in zip(maps, masks)])
    components = []
    for m, g in zip(maps, masks):
        lab = measure.label(g, connectivity=2)
        components += [m[lab == c] for c in range(1, lab.max() + 1)]
    fprs, pros = [0.0], [0.0]
    for t in sorted(set(np.concatenate([m.ravel() for m in maps]).tolist()), reverse=True):
        fprs.append(float((normals >= t).mean()))
        pros.append(float(np.mean([(c >= t).mean() for c in components])))
    out = {}
    for name, limit in (("aupro", 0.3), ("aupro_005", 0.05)):
        area = 0.0
        for j in range(1, len(fprs)):
            x0, x1, y0, y1 = fprs[j - 1], fprs[j], pros[j - 1], pros[j]
            if x1 <= limit:
                area += (x1 - x0) * (y0 + y1) / 2
            else:
                if x0 < limit:
                    y_at = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
                    area += (limit - x0) * (y0 + y_at) / 2
                break
        out[name] = area / limit
    labels = np.concatenate([g.ravel() for g in masks])
    scores = np.concatenate([m.ravel() for m in maps])
    out["pixel_auroc"] = float(roc_auc_score(labels, scores))
    out["pixel_ap"] = float(average_precision_score(labels, scores))
    return out


def random_set(rng: np.random.Generator, kind: str, n: int = 3,
               sides: tuple[int, int] = (5, 30)) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Maps of different, non-square sizes with scattered defects; ``kind`` makes them adversarial."""
    maps, masks = [], []
    for i in range(n):
        h, w = int(rng.integers(*sides)), int(rng.integers(*sides))
        g = rng.random((h, w)) < rng.uniform(0.02, 0.3)
        g[0, 0], g[-1, -1] = i == 0, False
        m = rng.random((h, w)) + rng.uniform(0.0, 1.0) * g
        if kind == "ties":          # few levels: ties across classes everywhere
            m = np.floor(m * 3) / 3
        elif kind == "equal":       # every pixel the same value
            m = np.full((h, w), 0.25)
        elif kind == "narrow":      # every value within 1e-9: all in one bin of any value grid
            m = 0.5 + 1e-9 * m
        elif kind == "range":       # hundreds of decades, both signs
            m = np.sign(m - 0.6) * 10.0 ** (300 * m - 300)  # m < 2: below 1e300
        elif kind == "float32":
            m = m.astype(np.float32)
        maps.append(m)
        masks.append(g)
    return maps, masks


def as_pairs(maps, masks):
    return lambda: zip(maps, masks)


@pytest.mark.parametrize("kind", ["random", "ties", "equal", "narrow", "range", "float32"])
def test_both_exact_paths_match_the_slow_reference(kind):
    rng = np.random.default_rng(len(kind))
    maps, masks = random_set(rng, kind)
    ref = slow_native(maps, masks)
    for path in ("in-memory", "streamed"):
        r = nm.native_pixel_metrics(as_pairs(maps, masks), path=path)
        assert r.exact and r.path == path and r.error_bound == 0.0
        for name in CURVE:
            assert getattr(r, name) == pytest.approx(ref[name], abs=1e-10), (path, name)


@pytest.mark.parametrize("seed", range(4))
def test_in_memory_path_is_metrics_pixel_metrics(seed):
    """Same-size images: the in-memory path gives exactly metrics.pixel_metrics' numbers."""
    rng = np.random.default_rng(seed)
    stacked_masks = rng.random((3, 17, 23)) < 0.15
    stacked_masks[0, 0, 0], stacked_masks[0, 0, 1] = True, False
    stacked_maps = rng.random((3, 17, 23)) + 0.5 * stacked_masks
    if seed % 2:
        stacked_maps = np.floor(stacked_maps * 4) / 4
    maps, masks = list(stacked_maps), list(stacked_masks)
    r = nm.native_pixel_metrics(as_pairs(maps, masks))
    assert r.path == "in-memory" and r.exact
    at_03 = metrics.pixel_metrics(stacked_maps, stacked_masks, 0.3, curve_points=0)
    at_005 = metrics.pixel_metrics(stacked_maps, stacked_masks, 0.05, curve_points=0)
    assert (r.pixel_auroc, r.pixel_ap, r.aupro, r.aupro_005) == \
        (at_03["pixel_auroc"], at_03["pixel_ap"], at_03["aupro"], at_005["aupro"])
    with_curve = nm.native_pixel_metrics(as_pairs(maps, masks), curve_points=None)
    curve = metrics.pixel_metrics(stacked_maps, stacked_masks, 0.3, curve_points=None)["pro_curve"]
    assert all(np.array_equal(a, b) for a, b in zip(with_curve.pro_curve, curve))


# ---------------------------------------------------------------------------
# The bounded (streamed, approximate) path against the exact one
# ---------------------------------------------------------------------------

def check_bounded(maps, masks, max_edges: int, tolerance: float = 1e-3) -> nm.NativeMetrics:
    exact = nm.native_pixel_metrics(as_pairs(maps, masks), path="in-memory")
    approx = nm.native_pixel_metrics(as_pairs(maps, masks), path="streamed", max_edges=max_edges,
                                     tolerance=tolerance)
    for name in CURVE:
        error = abs(getattr(approx, name) - getattr(exact, name))
        assert error <= approx.error_bounds[name] + 1e-12 and approx.error_bounds[name] <= tolerance, name
    assert approx.exact == (approx.error_bound == 0.0)
    return approx


@pytest.mark.parametrize("kind", ["random", "ties", "equal", "narrow", "range", "float32"])
def test_bounded_path_within_tolerance_on_adversarial_sets(kind):
    """Thousands of anomalous pixels and a few edges: the first counting pass leaves bounds over
    the tolerance, refinement brings them within it, short of exact. Few distinct values (ties,
    all equal) are all edges from the start: exact."""
    rng = np.random.default_rng(100 + len(kind))
    maps, masks = random_set(rng, kind, n=4, sides=(40, 90))
    for max_edges, tolerance in ((8, 1e-3), (64, 1e-3), (3, 0.02)):
        r = check_bounded(maps, masks, max_edges, tolerance)
        assert r.exact == (kind in ("ties", "equal")), (max_edges, r.error_bounds)


def test_bounded_path_refines_where_the_bound_needs_it():
    """Defects whose values interleave with many normal ones: two edges leave a large bound, so
    further passes cut the slots that carry it until it is within the tolerance, short of exact."""
    rng = np.random.default_rng(7)
    maps, masks = [], []
    for h, w in ((160, 180), (170, 150), (140, 190)):
        g = np.zeros((h, w), dtype=bool)
        g[5:85, 10:110] = True
        maps.append(rng.random((h, w)) + 0.3 * g)
        masks.append(g)
    r = check_bounded(maps, masks, max_edges=2)
    assert r.passes >= 3 and not r.exact and 0.0 < r.error_bound <= 1e-3


@fuzz(25)
@given(seed=st.integers(0, 2 ** 32 - 1), kind=st.sampled_from(["random", "ties", "narrow", "range", "float32"]),
       max_edges=st.sampled_from([2, 5, 16]))
def test_bounded_path_fuzzed(seed, kind, max_edges):
    rng = np.random.default_rng(seed)
    maps, masks = random_set(rng, kind, n=int(rng.integers(1, 5)), sides=(3, 70))
    check_bounded(maps, masks, max_edges)


def test_streamed_path_holds_one_image_not_the_set():
    """100 maps of 200 x 150 float64 made on the fly (24 MB in all), 0.5 % anomalous in every other
    one: the streamed metrics (and the generator here) never hold more than a few copies of one map
    plus the anomalous pixels."""
    def pairs():
        for i in range(100):
            rng = np.random.default_rng(i)
            g = np.zeros((200, 150), dtype=bool)
            g[50:62, 70:82] = i % 2 == 0
            yield rng.random((200, 150)) + 0.5 * g, g

    one_map = 200 * 150 * 8
    tracemalloc.start()
    try:
        r = nm.native_pixel_metrics(pairs, path="streamed")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.exact and r.n_pixels == 100 * one_map // 8
    assert peak < 10 * one_map, peak  # the whole set is 100 maps


# ---------------------------------------------------------------------------
# Bad input, budgets, the result
# ---------------------------------------------------------------------------

def test_clear_errors():
    """Each a one-line TransFusionError naming the image (or the option) and the fix."""
    m, g = np.random.default_rng(0).random((4, 5)), np.zeros((4, 5), dtype=bool)
    g[1, 1] = True
    bad = m.copy()
    bad[0, 0] = np.nan
    calls = []

    def shrinking():  # a second pass that gives fewer images than the first
        calls.append(1)
        return iter([(m, g)] * (3 - len(calls)))

    cases = [
        (lambda: iter([(m, g.T, "part_7.png")]), {}, "part_7.png: anomaly map \\[4, 5\\] and mask \\[5, 4\\]"),
        (lambda: iter([(m, g), (bad, g)]), {}, "image 1: the anomaly map holds NaN"),
        (lambda: iter([]), {}, "no images"),
        (lambda: iter([(m, g)]), {"memory_budget": 100}, "the 1 up to image 0 need about .* kB, more than the memory budget of 0.1 kB: raise memory_budget"),
        (shrinking, {"path": "streamed"}, "the pairs changed between passes"),
    ]
    for pairs, options, message in cases:
        with pytest.raises(TransFusionError, match=message) as caught:
            nm.native_pixel_metrics(pairs, **options)
        assert "\n" not in str(caught.value)
    with pytest.raises(ValueError):
        nm.native_pixel_metrics(lambda: iter([(m, g)]), path="fast")


def test_auto_path_follows_the_budget():
    """Three 100 x 100 maps with about 10 anomalous pixels each: 240 kB of values. A budget of
    twice that holds the anomalous pixels and one image's copies, but not every value as well."""
    rng = np.random.default_rng(3)
    masks = [rng.random((100, 100)) < 0.001 for _ in range(3)]
    maps = [rng.random((100, 100)) + g for g in masks]
    roomy = nm.native_pixel_metrics(as_pairs(maps, masks))
    tight = nm.native_pixel_metrics(as_pairs(maps, masks), memory_budget=2 * 3 * 100 * 100 * 8)
    assert roomy.path == "in-memory" and tight.path == "streamed" and tight.exact
    # told the pixel count beforehand, "auto" goes streamed when float64 values could not fit
    assert nm.native_pixel_metrics(as_pairs(maps, masks), n_pixels=10 ** 12).path == "streamed"
    assert nm.native_pixel_metrics(as_pairs(maps, masks), n_pixels=30_000).path == "in-memory"
    for name in CURVE:
        assert getattr(tight, name) == pytest.approx(getattr(roomy, name), abs=1e-12)


def test_result_as_dict_is_json():
    r = nm.native_pixel_metrics(worked_pairs, {"baseline": 0.6}, curve_points=None)
    d = json.loads(json.dumps(r.as_dict()))
    assert d["seg_f1"]["baseline"]["tp"] == 3 and d["exact"] and d["error_bound"] == 0.0
    assert d["pro_curve"][0][0] == 0.0 and d["pro_curve"][0][-1] == pytest.approx(0.3)


# ---------------------------------------------------------------------------
# pooled_mean_std and the baseline threshold
# ---------------------------------------------------------------------------

def test_pooled_mean_std_matches_numpy_on_the_concatenation():
    rng = np.random.default_rng(11)
    # a large offset with small spread: a naive sum of squares would lose every digit of the std
    maps = [1e6 + rng.standard_normal((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) for _ in range(12)]
    maps.append(np.zeros((0, 5)))
    maps.append(rng.random((3, 7)).astype(np.float32) + np.float32(1e6))
    everything = np.concatenate([m.astype(np.float64).ravel() for m in maps])
    mean, std = nm.pooled_mean_std(iter(maps))
    assert mean == pytest.approx(everything.mean(), rel=1e-14)
    assert std == pytest.approx(everything.std(), rel=1e-9)
    assert nm.baseline_threshold(maps) == pytest.approx(everything.mean() + 3 * everything.std(), rel=1e-14)
    assert nm.pooled_mean_std([np.full((4, 4), 2.5)]) == (2.5, 0.0)
    with pytest.raises(TransFusionError, match="no pixels"):
        nm.pooled_mean_std([])
    with pytest.raises(TransFusionError, match="map 1: holds NaN"):
        nm.pooled_mean_std([np.ones(3), np.array([np.nan])])
