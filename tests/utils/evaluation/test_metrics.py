"""utils.metrics against slow, obviously-correct implementations written here.

The references loop over every distinct threshold and every connected
component, so they are only run on small inputs.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage
from skimage import measure
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from utils.evaluation import metrics as metrics

# ---------------------------------------------------------------------------
# Slow references
# ---------------------------------------------------------------------------


def slow_auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Probability that a positive outscores a negative, ties counting 1/2, by pairs."""
    pos = scores[labels.astype(bool)].astype(np.float64)
    neg = scores[~labels.astype(bool)].astype(np.float64)
    if pos.size == 0 or neg.size == 0:
        return None
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


def slow_f1_max(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Try every distinct score as threshold; keep the highest among equal F1."""
    labels = labels.astype(bool)
    best = (-1.0, None)
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= t
        tp = int((pred & labels).sum())
        fp = int((pred & ~labels).sum())
        fn = int((~pred & labels).sum())
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best[0]:
            best = (f1, t)
    return best


def slow_pro_curve(maps: np.ndarray, masks: np.ndarray) -> tuple[list[float], list[float]]:
    """(FPR, PRO) at every distinct threshold, highest first, starting at (0, 0)."""
    masks = masks.astype(bool)
    components = []
    for i in range(maps.shape[0]):
        # skimage with connectivity=2 is 8-connectivity: an independent labeller.
        lab = measure.label(masks[i], connectivity=2)
        for c in range(1, lab.max() + 1):
            components.append((i, lab == c))
    normal_values = maps[~masks]
    fprs, pros = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        fprs.append(float((normal_values >= t).sum()) / normal_values.size)
        overlaps = [float((maps[i][region] >= t).sum()) / region.sum() for i, region in components]
        pros.append(sum(overlaps) / len(overlaps))
    return fprs, pros


def slow_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float | None:
    """Trapezoid of the slow PRO curve up to max_fpr (interpolated there), / max_fpr."""
    masks = masks.astype(bool)
    if not masks.any() or masks.all():
        return None
    x, y = slow_pro_curve(maps, masks)
    area = 0.0
    for j in range(1, len(x)):
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < max_fpr:
                y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
                area += (max_fpr - x0) * (y0 + y_at) / 2
            break
    return area / max_fpr


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid rule (np.trapezoid is numpy >= 2 only)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def blob_masks(rng: np.random.Generator, n: int, h: int, w: int, level: float) -> np.ndarray:
    """Random blob-shaped masks: thresholded smoothed noise."""
    noise = ndimage.gaussian_filter(rng.standard_normal((n, h, w)), sigma=(0, 1.5, 1.5))
    return noise > level * noise.std()


# ---------------------------------------------------------------------------
# Image level
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_image_metrics_match_references(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    labels[0], labels[1] = True, False  # both classes present
    scores = rng.random(n) + 0.5 * labels
    if seed % 2:  # quantise: many ties, some across classes
        scores = np.round(scores * 4) / 4
    assert metrics.image_auroc(scores, labels) == pytest.approx(slow_auroc(scores, labels), abs=1e-12)
    assert metrics.image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.image_ap(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    f1, thr = metrics.f1_max(scores, labels)
    ref_f1, ref_thr = slow_f1_max(scores, labels)
    assert f1 == pytest.approx(ref_f1, abs=1e-12)
    assert thr == ref_thr
    fpr, tpr = metrics.roc_curve_points(scores, labels)
    sk_fpr, sk_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    assert trapezoid(tpr, fpr) == pytest.approx(metrics.image_auroc(scores, labels), abs=1e-12)


def test_image_metrics_one_class_is_none_not_crash() -> None:
    scores = np.array([0.1, 0.5, 0.3])
    normal = np.zeros(3, dtype=bool)
    assert metrics.image_auroc(scores, normal) is None
    assert metrics.image_ap(scores, normal) is None
    assert metrics.f1_max(scores, normal) is None
    assert metrics.roc_curve_points(scores, normal) is None
    anomalous = np.ones(3, dtype=int)
    assert metrics.image_auroc(scores, anomalous) is None
    assert metrics.image_ap(scores, anomalous) == 1.0
    assert metrics.f1_max(scores, anomalous) == (1.0, 0.1)
    assert metrics.image_auroc([], []) is None


def test_image_metrics_perfect_and_inverted() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert metrics.image_auroc(scores, labels) == 1.0
    assert metrics.image_ap(scores, labels) == 1.0
    assert metrics.f1_max(scores, labels) == (1.0, 0.8)
    assert metrics.image_auroc(-scores, labels) == 0.0
    assert metrics.image_auroc(np.zeros(5), labels) == 0.5


def test_image_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError):
        metrics.image_auroc([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError):
        metrics.image_auroc([0.1, 0.2, 0.3], [0, 1])


# ---------------------------------------------------------------------------
# Pixel level
# ---------------------------------------------------------------------------


def check_pixel(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> dict:
    """pixel_metrics against every reference; returns its result."""
    result = metrics.pixel_metrics(maps, masks, max_fpr=max_fpr, curve_points=None)
    expected_aupro = slow_aupro(maps, masks, max_fpr)
    if expected_aupro is None:
        assert result["aupro"] is None and result["pixel_auroc"] is None
        return result
    assert result["aupro"] == pytest.approx(expected_aupro, abs=1e-10)
    expected_auroc = slow_auroc(maps.ravel(), masks.ravel())
    assert result["pixel_auroc"] == pytest.approx(expected_auroc, abs=1e-12)
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel() != 0, maps.ravel()), abs=1e-12)
    # The full curve integrates to the same number and stays inside [0, max_fpr].
    fpr, pro = result["pro_curve"]
    assert fpr[0] == 0.0 and pro[0] == 0.0 and fpr[-1] == pytest.approx(max_fpr)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= -1e-12)
    assert trapezoid(pro, fpr) / max_fpr == pytest.approx(result["aupro"], abs=1e-10)
    # The convenience functions agree.
    assert metrics.aupro(maps, masks, max_fpr) == result["aupro"]
    assert metrics.pixel_auroc(maps, masks) == result["pixel_auroc"]
    return result


@pytest.mark.parametrize("seed", range(10))
def test_pixel_metrics_random_continuous(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, h, w = int(rng.integers(1, 4)), int(rng.integers(6, 18)), int(rng.integers(6, 18))
    masks = blob_masks(rng, n, h, w, level=rng.uniform(0.3, 1.5))
    masks[0, 0, 0] = True  # at least one anomalous pixel
    masks[-1, -1, -1] = False  # at least one normal pixel
    maps = (rng.random((n, h, w)) + rng.uniform(0, 0.8) * masks).astype(np.float32)
    check_pixel(maps, masks)


@pytest.mark.parametrize("seed", range(10))
def test_pixel_metrics_random_quantised_ties(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n, h, w = 2, int(rng.integers(5, 14)), int(rng.integers(5, 14))
    masks = rng.random((n, h, w)) < rng.uniform(0.05, 0.5)
    masks.flat[0], masks.flat[-1] = True, False
    levels = int(rng.integers(2, 6))
    maps = np.floor((rng.random((n, h, w)) + 0.5 * masks) * levels) / levels
    check_pixel(maps, masks)
    check_pixel(maps, masks, max_fpr=1.0)
    check_pixel(maps, masks, max_fpr=0.05)


@settings(max_examples=60, deadline=None)
@given(
    maps=hnp.arrays(np.int8, (2, 6, 7), elements=st.integers(0, 5)),
    masks=hnp.arrays(bool, (2, 6, 7)),
    max_fpr=st.sampled_from([0.3, 0.1, 0.5, 1.0, 1.0 / 3.0]),
)
def test_pixel_metrics_hypothesis(maps: np.ndarray, masks: np.ndarray, max_fpr: float) -> None:
    check_pixel(maps, masks, max_fpr)


def test_no_anomalous_pixels_is_none() -> None:
    maps = np.random.default_rng(0).random((3, 8, 8))
    masks = np.zeros((3, 8, 8), dtype=bool)
    assert metrics.pixel_metrics(maps, masks) == {"pixel_auroc": None, "pixel_ap": None, "aupro": None,
                                                  "pro_curve": None}
    assert metrics.aupro(maps, masks) is None
    assert metrics.pixel_auroc(maps, masks) is None
    assert metrics.aupro(maps, ~masks) is None  # no normal pixel either
    result = metrics.compute_metrics(maps.max(axis=(1, 2)), np.zeros(3), maps, masks)
    assert result == {"image_auroc": None, "image_ap": None, "image_f1_max": None,
                      "image_f1_threshold": None, "pixel_auroc": None, "aupro": None, "pixel_ap": None}


def test_single_defect_region() -> None:
    rng = np.random.default_rng(3)
    masks = np.zeros((2, 20, 20), dtype=bool)
    masks[1, 5:11, 8:15] = True
    maps = rng.random((2, 20, 20)) * 0.7 + 0.4 * masks
    check_pixel(maps, masks)


def test_many_tiny_regions_and_eight_connectivity() -> None:
    rng = np.random.default_rng(4)
    masks = np.zeros((2, 16, 16), dtype=bool)
    masks[0, ::3, ::3] = True  # 36 isolated single pixels
    masks[1, 2, 2] = masks[1, 3, 3] = masks[1, 4, 4] = True  # one diagonal component
    maps = rng.random((2, 16, 16))
    check_pixel(maps, masks)
    # Two diagonal neighbours are ONE component. Pixels (0,0) and (1,1) touch
    # diagonally, (3,3) is apart: at the threshold 1.0 that only catches
    # (0,0), PRO = mean(1/2, 0) = 1/4 with 8-connectivity (it would be
    # mean(1, 0, 0) = 1/3 with 4-connectivity).
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 3, 3] = True
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = 1.0
    fpr, pro = metrics.pixel_metrics(maps, masks, curve_points=None)["pro_curve"]
    assert (fpr[2], pro[2]) == (0.0, pytest.approx(0.25))


def test_all_zero_maps() -> None:
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, 2:5, 2:5] = True
    maps = np.zeros((2, 10, 10), dtype=np.float32)
    result = check_pixel(maps, masks)
    # One diagonal step from (0, 0) to (1, 1): PRO(0.3) = 0.3, area 0.045.
    assert result["aupro"] == pytest.approx(0.15)
    assert result["pixel_auroc"] == 0.5


def test_perfect_and_inverted_detector() -> None:
    rng = np.random.default_rng(5)
    masks = blob_masks(rng, 3, 24, 24, level=1.0)
    maps = np.where(masks, 0.6 + 0.4 * rng.random(masks.shape), 0.5 * rng.random(masks.shape))
    perfect = check_pixel(maps, masks)
    assert perfect["aupro"] == pytest.approx(1.0, abs=1e-12)
    assert perfect["pixel_auroc"] == 1.0
    inverted = check_pixel(1.0 - maps, masks)
    assert inverted["aupro"] == 0.0
    assert inverted["pixel_auroc"] == 0.0


def test_input_forms_give_the_same_numbers() -> None:
    rng = np.random.default_rng(6)
    masks = blob_masks(rng, 3, 12, 12, level=0.8)
    maps = rng.random((3, 12, 12)) + 0.3 * masks
    ref = metrics.pixel_metrics(maps, masks)
    as_uint8 = metrics.pixel_metrics(maps, masks.astype(np.uint8) * 255)
    transposed = metrics.pixel_metrics(np.ascontiguousarray(maps.transpose(0, 2, 1)).transpose(0, 2, 1), masks)
    for other in (as_uint8, transposed):
        assert other["aupro"] == ref["aupro"] and other["pixel_auroc"] == ref["pixel_auroc"]
    channel_axis = metrics.pixel_metrics(maps[:, None], masks[:, None])
    assert channel_axis["aupro"] == ref["aupro"]
    single = metrics.pixel_metrics(maps[0], masks[0])
    assert single["aupro"] == pytest.approx(slow_aupro(maps[:1], masks[:1]), abs=1e-10)
    with pytest.raises(ValueError):
        metrics.pixel_metrics(np.where(masks, np.nan, maps), masks)
    with pytest.raises(ValueError):
        metrics.pixel_metrics(maps, masks[:2])
    with pytest.raises(ValueError):
        metrics.pixel_metrics(maps, masks, max_fpr=0.0)


def test_thinned_curve_points_lie_on_the_exact_curve() -> None:
    rng = np.random.default_rng(7)
    masks = blob_masks(rng, 4, 32, 32, level=0.7)
    maps = rng.random((4, 32, 32)).astype(np.float32) + 0.4 * masks
    full = metrics.pixel_metrics(maps, masks, curve_points=None)
    thin = metrics.pixel_metrics(maps, masks, curve_points=50)
    assert thin["aupro"] == full["aupro"]
    fpr, pro = thin["pro_curve"]
    assert fpr.size <= 2 * 50 + 1 and fpr[-1] == pytest.approx(0.3)
    exact = set(zip(full["pro_curve"][0].tolist(), full["pro_curve"][1].tolist()))
    assert all(p in exact for p in zip(fpr.tolist(), pro.tolist()))
    assert trapezoid(pro, fpr) / 0.3 == pytest.approx(full["aupro"], abs=0.02)


def test_compute_metrics_keys_and_values() -> None:
    rng = np.random.default_rng(8)
    masks = blob_masks(rng, 6, 16, 16, level=1.2)
    masks[:2] = False
    maps = rng.random((6, 16, 16)) + 0.5 * masks
    scores = maps.max(axis=(1, 2))
    labels = masks.any(axis=(1, 2))
    result = metrics.compute_metrics(scores, labels, maps, masks)
    assert list(result) == ["image_auroc", "image_ap", "image_f1_max", "image_f1_threshold",
                            "pixel_auroc", "aupro", "pixel_ap"]
    assert result["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert result["aupro"] == pytest.approx(slow_aupro(maps, masks), abs=1e-10)
    assert metrics.compute_metrics(scores, labels)["aupro"] is None


def test_pixel_metrics_copies_maps_at_most_once() -> None:
    rng = np.random.default_rng(9)
    masks = blob_masks(rng, 40, 64, 64, level=1.5)
    maps = rng.random((40, 64, 64)).astype(np.float32) + masks
    tracemalloc.start()
    try:
        metrics.pixel_metrics(maps, masks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One sorted copy of the maps plus a few numbers per anomalous pixel
    # (which are a few % of all pixels), plus small change.
    assert peak < maps.nbytes + 48 * int(masks.sum()) + 65536
