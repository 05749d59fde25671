"""models.scoring.map_at_size: the one rule that takes a map from the working size to its image's size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.scoring import map_at_size


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_map_stays_constant_at_any_size(dtype):
    out = map_at_size(np.full((8, 8), 0.37, dtype=dtype), (23, 41))  # not square, not a multiple
    assert out.shape == (23, 41) and out.dtype == dtype
    # w a + (1 - w) a is a up to the rounding of the two products
    np.testing.assert_allclose(out, dtype(0.37), rtol=4 * np.finfo(dtype).eps, atol=0)


def test_two_by_two_to_four_by_four_by_hand():
    """align_corners=False: output pixel x samples the input at (x + 0.5) / 2 - 0.5, clamped to the
    edge: x = 0, 1, 2, 3 -> -0.25 (edge), 0.25, 0.75, 1.25 (edge), so along one axis [a, b] becomes
    [a, 3a/4 + b/4, a/4 + 3b/4, b]. [[0, 4], [8, 12]]: rows [0, 1, 3, 4] and [8, 9, 11, 12], then
    the same between them (align_corners=True would give 0, 4/3, 8/3, 4 instead)."""
    expected = np.array([[0, 1, 3, 4], [2, 3, 5, 6], [6, 7, 9, 10], [8, 9, 11, 12]], dtype=np.float64)
    got = map_at_size(np.array([[0.0, 4.0], [8.0, 12.0]]), (4, 4))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    as_tensor = map_at_size(torch.tensor([[0.0, 4.0], [8.0, 12.0]], dtype=torch.float32), (4, 4))
    assert isinstance(as_tensor, np.ndarray) and as_tensor.dtype == np.float32
    np.testing.assert_allclose(as_tensor, expected, rtol=0, atol=1e-6)


def test_same_size_is_the_map_and_bad_input_is_refused():
    m = np.random.default_rng(0).random((5, 7))
    np.testing.assert_array_equal(map_at_size(m, (5, 7)), m)
    for bad in (m[None], m.astype(np.int64)):
        with pytest.raises(ValueError, match="map_at_size"):
            map_at_size(bad, (3, 3))
    with pytest.raises(ValueError, match="positive"):
        map_at_size(m, (0, 3))
