"""Pixel AP (docs/method.md §7: average precision over all test pixels, as scikit-learn's
average_precision_score) against scikit-learn itself, on continuous, tied and chunked data."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from utils.evaluation import metrics as metrics


def sklearn_ap(maps: np.ndarray, masks: np.ndarray) -> float:
    return float(average_precision_score(masks.reshape(-1), maps.reshape(-1)))


@pytest.mark.parametrize("seed", range(6))
def test_pixel_ap_matches_sklearn_on_continuous_maps(seed):
    rng = np.random.default_rng(seed)
    n, h, w = rng.integers(1, 6), rng.integers(4, 24), rng.integers(4, 24)
    masks = rng.random((n, h, w)) < rng.uniform(0.02, 0.4)
    masks.reshape(-1)[0] = True   # both classes present
    masks.reshape(-1)[-1] = False
    maps = rng.random((n, h, w)) + rng.uniform(0, 1) * masks
    got = metrics.pixel_metrics(maps, masks)["pixel_ap"]
    assert got == pytest.approx(sklearn_ap(maps, masks), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("levels", [2, 3, 7, 40])
def test_pixel_ap_matches_sklearn_with_ties_across_classes(levels):
    """Few distinct values: most thresholds hold normal and anomalous pixels together."""
    rng = np.random.default_rng(levels)
    masks = rng.random((4, 16, 16)) < 0.2
    maps = np.floor((rng.random((4, 16, 16)) + 0.3 * masks) * levels) / levels
    got = metrics.pixel_metrics(maps.astype(np.float32), masks)["pixel_ap"]
    assert got == pytest.approx(sklearn_ap(maps.astype(np.float32), masks), rel=1e-12, abs=1e-14)


def test_pixel_ap_by_hand():
    """Values 0.9 (anomalous), 0.8 (normal), 0.8 (anomalous), 0.1 (normal): thresholds at the two
    anomalous values give precision 1/1 and 2/3 at recall 1/2 and 1, so AP = 1/2 + 1/3."""
    maps = np.array([[[0.9, 0.8], [0.8, 0.1]]])
    masks = np.array([[[True, False], [True, False]]])
    assert metrics.pixel_metrics(maps, masks)["pixel_ap"] == pytest.approx(0.5 + 1 / 3, abs=1e-15)


def test_pixel_ap_is_the_same_across_chunks(monkeypatch):
    """The per-pixel sums run in slices; a slice boundary inside a tie group changes nothing."""
    rng = np.random.default_rng(11)
    masks = rng.random((3, 20, 20)) < 0.3
    maps = np.round(rng.random((3, 20, 20)) + 0.5 * masks, 1)
    whole = metrics.pixel_metrics(maps, masks, curve_points=0)
    monkeypatch.setattr(metrics, "_CHUNK", 7)
    sliced = metrics.pixel_metrics(maps, masks, curve_points=0)
    assert sliced["pixel_ap"] == pytest.approx(whole["pixel_ap"], rel=1e-13)
    assert sliced["pixel_ap"] == pytest.approx(sklearn_ap(maps, masks), rel=1e-12)
    assert sliced["pixel_auroc"] == whole["pixel_auroc"] and sliced["aupro"] == pytest.approx(whole["aupro"])


def test_pixel_ap_undefined_without_both_classes_and_in_compute_metrics():
    rng = np.random.default_rng(2)
    maps = rng.random((2, 8, 8))
    assert metrics.pixel_metrics(maps, np.zeros((2, 8, 8), bool))["pixel_ap"] is None
    masks = rng.random((2, 8, 8)) < 0.25
    result = metrics.compute_metrics(maps.max(axis=(1, 2)), masks.any(axis=(1, 2)), maps, masks)
    assert result["pixel_ap"] == pytest.approx(sklearn_ap(maps, masks), rel=1e-12)
