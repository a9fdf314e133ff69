"""Input folding (tessera.sw_driver.space_to_depth): a convolution and its folded form (space-to-depth, a row's
taps into channels, or both) give the same integers on random shapes, and what cannot fold is not folded (when
folding pays: tests/test_resident.py)."""

import numpy as np
import pytest

from tessera.hw.layouts import MAX_KERNEL
from tessera.sw_driver import golden
from tessera.sw_driver.space_to_depth import foldable, input_fold


def test_the_folded_convolution_computes_the_same_sums():
    rng = np.random.default_rng(0)
    checked = 0
    row_taps_checked = 0
    while checked < 90:
        stride, row_taps = int(rng.integers(1, 4)), bool(rng.integers(0, 2))
        kh, kw = (int(k) for k in rng.integers(1, 14 if stride > 1 else 8, 2))
        channels, h, w = int(rng.integers(1, 4)), int(rng.integers(max(kh, 3), 20)), int(rng.integers(max(kw, 3), 20))
        pads = tuple(int(p) for p in rng.integers(0, 6, 4))
        fold = input_fold((kh, kw), (stride, stride), pads, (h, w), row_taps=row_taps)
        if fold is None:
            continue
        assert fold.row_taps == row_taps
        row_taps_checked += row_taps
        x = rng.integers(-128, 128, (2, channels, h, w), dtype=np.int8)
        weights = rng.integers(-128, 128, (3, channels, kh, kw), dtype=np.int8)
        zero_point = int(rng.integers(-20, 20))
        expected = golden.conv2d_int(x, zero_point, weights, 0, strides=(stride, stride), pads=pads)
        folded = fold.input(x, zero_point)
        assert folded.shape == (2, *fold.folded_shape(channels))
        assert max(fold.folded_kernel) <= MAX_KERNEL
        got = golden.conv2d_int(folded, zero_point, fold.weights(weights), 0)
        np.testing.assert_array_equal(got, expected)
        if row_taps:
            assert fold.folded_kernel[1] == 1 and folded.shape[-1] == expected.shape[-1]
        checked += 1
    assert row_taps_checked >= 20


def test_a_row_s_taps_fold_into_channels_as_im2col_lays_them_out():
    """ResNet-8's first conv (3x3, 3 channels, pads 1): a 3x1 conv over 9 channels, channel ``3*t + c`` of folded
    pixel (i, j) channel c of padded pixel (i, j + t)."""
    x = np.arange(3 * 4 * 5, dtype=np.int8).reshape(1, 3, 4, 5)
    fold = input_fold((3, 3), (1, 1), (1, 1, 1, 1), (4, 5), row_taps=True)
    assert fold.folded_kernel == (3, 1) and fold.folded_shape(3) == (9, 6, 5)
    folded = fold.input(x, pad_value=-7)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-7)
    for t in range(3):
        np.testing.assert_array_equal(folded[:, 3 * t:3 * t + 3], padded[..., t:t + 5])


@pytest.mark.parametrize("kernel, strides, folds", [
    ((10, 4), (2, 2), True),     # the DS-CNN's first conv: 5x2
    ((14, 14), (2, 2), True),
    ((15, 3), (2, 2), False),    # 8 rows folded: still past the window
    ((9, 9), (1, 1), False),     # stride 1: nothing to fold space-to-depth
    ((9, 4), (2, 1), False),     # unequal strides
])
def test_only_equal_strides_whose_folded_kernel_fits_fold(kernel, strides, folds):
    assert foldable(kernel, strides) == folds
    assert (input_fold(kernel, strides, (0, 0, 0, 0), (40, 40)) is not None) == folds
