"""Space-to-depth folding (tessera.sw_driver.space_to_depth): a strided convolution and its folded form give the
same integers on random shapes, and what cannot fold is not folded (when folding pays: tests/test_resident.py)."""

import numpy as np
import pytest

from tessera.hw.layouts import MAX_KERNEL
from tessera.sw_driver import golden
from tessera.sw_driver.space_to_depth import foldable, input_fold


def test_the_folded_convolution_computes_the_same_sums():
    rng = np.random.default_rng(0)
    checked = 0
    while checked < 60:
        stride = int(rng.integers(2, 4))
        kh, kw = (int(k) for k in rng.integers(1, 14, 2))
        channels, h, w = int(rng.integers(1, 4)), int(rng.integers(max(kh, 3), 20)), int(rng.integers(max(kw, 3), 20))
        pads = tuple(int(p) for p in rng.integers(0, 6, 4))
        fold = input_fold((kh, kw), (stride, stride), pads, (h, w))
        if fold is None:
            continue
        x = rng.integers(-128, 128, (2, channels, h, w), dtype=np.int8)
        weights = rng.integers(-128, 128, (3, channels, kh, kw), dtype=np.int8)
        zero_point = int(rng.integers(-20, 20))
        expected = golden.conv2d_int(x, zero_point, weights, 0, strides=(stride, stride), pads=pads)
        folded = fold.input(x, zero_point)
        assert folded.shape == (2, *fold.folded_shape(channels))
        assert max(fold.folded_kernel) <= MAX_KERNEL
        got = golden.conv2d_int(folded, zero_point, fold.weights(weights), 0)
        np.testing.assert_array_equal(got, expected)
        checked += 1


@pytest.mark.parametrize("kernel, strides, folds", [
    ((10, 4), (2, 2), True),     # the DS-CNN's first conv: 5x2
    ((14, 14), (2, 2), True),
    ((15, 3), (2, 2), False),    # 8 rows folded: still past the window
    ((9, 9), (1, 1), False),     # stride 1: nothing to fold
    ((9, 4), (2, 1), False),     # unequal strides
])
def test_only_equal_strides_whose_folded_kernel_fits_fold(kernel, strides, folds):
    assert foldable(kernel, strides) == folds
    assert (input_fold(kernel, strides, (0, 0, 0, 0), (40, 40)) is not None) == folds
