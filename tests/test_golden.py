"""Unit tests of the golden model: hand-worked values, extremes, identities the hardware relies on, errors.

Agreement with onnxruntime is tested in ``test_golden_onnxruntime.py``; these tests pin the behaviour at the
edges by hand and check the golden model against straightforward reference loops.
"""

from fractions import Fraction

import numpy as np
import pytest

from tessera.sw_driver import golden


def conv_reference(x, x_zp, w, w_zp, strides, pads, dilations, group):
    """The convolution sum written out loop by loop, in Python integers."""
    n_batch, channels, height, width = x.shape
    out_channels, group_channels, kh, kw = w.shape
    top, left, bottom, right = pads
    out_h = (height + top + bottom - dilations[0] * (kh - 1) - 1) // strides[0] + 1
    out_w = (width + left + right - dilations[1] * (kw - 1) - 1) // strides[1] + 1
    w_zp = np.broadcast_to(w_zp, (out_channels,))
    y = np.zeros((n_batch, out_channels, out_h, out_w), np.int64)
    for n, o, i, j in np.ndindex(y.shape):
        g = o // (out_channels // group)
        total = 0
        for c, u, v in np.ndindex(group_channels, kh, kw):
            row, col = i * strides[0] - top + u * dilations[0], j * strides[1] - left + v * dilations[1]
            if 0 <= row < height and 0 <= col < width:
                tap = int(x[n, g * group_channels + c, row, col]) - x_zp
                total += tap * (int(w[o, c, u, v]) - int(w_zp[o]))
        y[n, o, i, j] = total
    return y


class TestQuantize:
    def test_ties_round_to_even(self):
        q = golden.quantize([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5], 1.0, 0, np.int8)
        np.testing.assert_array_equal(q, [-2, -2, 0, 0, 2, 2])

    def test_zero_point_is_added_after_rounding(self):
        # 0.5 rounds to 0, then + 1; rounding after adding would give round(1.5) = 2.
        assert golden.quantize([0.5], 1.0, 1, np.int8)[0] == 1

    def test_saturates_both_ways(self):
        x = [-1e30, -np.inf, -1000.0, 1000.0, np.inf, 1e30]
        np.testing.assert_array_equal(golden.quantize(x, 0.1, 0, np.int8), [-128] * 3 + [127] * 3)
        np.testing.assert_array_equal(golden.quantize(x, 0.1, 0, np.uint8), [0] * 3 + [255] * 3)

    @pytest.mark.parametrize("dtype, zero_point",
                             [(np.int8, -128), (np.int8, 127), (np.uint8, 0), (np.uint8, 255)])
    def test_zero_points_at_the_ends_of_the_range(self, dtype, zero_point):
        lo, hi = golden.qrange(dtype)
        q = np.arange(lo, hi + 1).astype(dtype)
        x = golden.dequantize(q, 0.05, zero_point)
        np.testing.assert_array_equal(golden.quantize(x, 0.05, zero_point, dtype), q)
        assert golden.quantize([0.0], 0.05, zero_point, dtype)[0] == zero_point

    def test_per_axis_matches_per_tensor_slices(self):
        rng = np.random.default_rng(0)
        x = rng.normal(0, 3, (2, 5, 7)).astype(np.float32)
        scale, zero_point = rng.uniform(0.01, 0.1, 5).astype(np.float32), rng.integers(-20, 20, 5)
        q = golden.quantize(x, scale, zero_point, np.int8, axis=1)
        for c in range(5):
            np.testing.assert_array_equal(q[:, c], golden.quantize(x[:, c], scale[c], zero_point[c], np.int8))

    def test_divides_in_float32(self):
        # x = float32(3.5 * 0.1): the float32 quotient x / 0.1 is exactly the tie 3.5 and goes to 4; a float64
        # quotient would be 3.4999999 and give 3.
        scale = np.float32(0.1)
        assert golden.quantize([np.float32(3.5) * scale], scale, 0)[0] == 4

    def test_rejects_nan(self):
        with pytest.raises(ValueError, match="NaN"):
            golden.quantize([np.nan], 1.0, 0)


class TestDequantize:
    def test_subtracts_zero_point_then_scales_in_float32(self):
        y = golden.dequantize(np.array([-128, 0, 127], np.int8), 0.1, -3)
        assert y.dtype == np.float32
        np.testing.assert_array_equal(y, np.float32([-125, 3, 130]) * np.float32(0.1))

    def test_int32_bias_with_per_channel_scale(self):
        bias = np.array([100, -100], np.int32)
        np.testing.assert_array_equal(golden.dequantize(bias, [0.5, 0.25], 0, axis=0), [50.0, -25.0])


class TestRequantScale:
    def test_is_float32_product_then_quotient(self):
        rng = np.random.default_rng(1)
        x_scale, y_scale = np.float32(rng.uniform(0.001, 1)), np.float32(rng.uniform(0.001, 1))
        w_scale = rng.uniform(0.001, 1, 1000).astype(np.float32)
        scale = golden.requant_scale(x_scale, w_scale, y_scale)
        assert scale.dtype == np.float32
        np.testing.assert_array_equal(scale, np.float32(x_scale * w_scale) / y_scale)

    def test_scalar_in_scalar_out(self):
        assert isinstance(golden.requant_scale(0.5, 0.25, 2.0), np.float32)
        assert golden.requant_scale(0.5, 0.25, 2.0) == np.float32(0.0625)


class TestRequantize:
    def test_ties_round_to_even_before_the_zero_point(self):
        acc = np.arange(-5, 6)
        # -2.5 -2 -1.5 -1 -0.5 0 0.5 1 1.5 2 2.5
        np.testing.assert_array_equal(golden.requantize(acc, 0.5, 0), [-2, -2, -2, -1, 0, 0, 0, 1, 2, 2, 2])
        # with zero point 1: round(acc / 2) + 1, not round(acc / 2 + 1)
        np.testing.assert_array_equal(golden.requantize([1, 3], 0.5, 1), [1, 3])

    def test_saturates_both_ways(self):
        acc = [-(2**31), -100000, 100000, 2**31 - 1]
        np.testing.assert_array_equal(golden.requantize(acc, 0.01, 0, np.int8), [-128, -128, 127, 127])
        np.testing.assert_array_equal(golden.requantize(acc, 0.01, 128, np.uint8), [0, 0, 255, 255])

    def test_zero_point_at_bottom_clips_like_relu(self):
        y = golden.requantize(np.arange(-300, 300, 7), 0.1, -128, np.int8)
        assert y.min() == -128 and (y[np.arange(-300, 300, 7) < 0] == -128).all()

    def test_converts_accumulator_to_float32_first(self):
        # 2**24 + 1 is not a float32: it becomes 2**24, and 2**24 * 2**-25 = 0.5 is a tie rounding to 0.
        assert golden.requantize([2**24 + 1], 2.0**-25, 0)[0] == 0

    def test_per_channel_scale_broadcasts_along_axis(self):
        rng = np.random.default_rng(2)
        acc = rng.integers(-5000, 5000, (2, 3, 4, 4))
        scale = np.float32([0.01, 0.02, 0.03])
        y = golden.requantize(acc, scale, 5, np.int8, axis=1)
        for c in range(3):
            np.testing.assert_array_equal(y[:, c], golden.requantize(acc[:, c], scale[c], 5, np.int8))

    def test_rejects_accumulator_beyond_int32(self):
        with pytest.raises(ValueError, match="int32"):
            golden.requantize([2**31], 1.0, 0)


class TestMatmulInt:
    def test_longest_sum_of_minus_128_squared_fits_int32(self):
        k = (2**31 - 1) // (128 * 128)  # 131071
        x, w = np.full((1, k), -128, np.int8), np.full((k, 1), -128, np.int8)
        assert golden.matmul_int(x, 0, w, 0)[0, 0] == 128 * 128 * k

    def test_one_more_term_overflows_and_names_the_shapes(self):
        k = (2**31 - 1) // (128 * 128) + 1
        x, w = np.full((1, k), -128, np.int8), np.full((k, 1), -128, np.int8)
        with pytest.raises(ValueError, match=r"x_q \(1, 131072\).*w_q \(131072, 1\).*int32"):
            golden.matmul_int(x, 0, w, 0)

    def test_zero_points_per_column(self):
        rng = np.random.default_rng(3)
        x = rng.integers(0, 256, (5, 7)).astype(np.uint8)
        w = rng.integers(-128, 128, (7, 3)).astype(np.int8)
        w_zp = np.array([-128, 0, 127])
        acc = golden.matmul_int(x, 255, w, w_zp)
        expected = (x.astype(np.int64) - 255) @ (w.astype(np.int64) - w_zp)
        assert acc.dtype == np.int32
        np.testing.assert_array_equal(acc, expected)

    def test_rejects_mismatched_shapes(self):
        with pytest.raises(ValueError, match=r"x_q \(2, 3\) and w_q \(4, 5\)"):
            golden.matmul_int(np.zeros((2, 3), np.int8), 0, np.zeros((4, 5), np.int8), 0)


class TestConv2dInt:
    @pytest.mark.parametrize("seed", range(6))
    def test_matches_loop_reference(self, seed):
        rng = np.random.default_rng(10 + seed)
        group = int(rng.choice([1, 2, 3]))
        kernel = tuple(int(k) for k in rng.integers(1, 4, 2))
        strides = tuple(int(s) for s in rng.integers(1, 3, 2))
        dilations = tuple(int(d) for d in rng.integers(1, 3, 2))
        pads = tuple(int(p) for p in rng.integers(0, 3, 4))
        x = rng.integers(0, 256, (2, 2 * group, 7, 8)).astype(np.uint8)
        w = rng.integers(-128, 128, (3 * group, 2, *kernel)).astype(np.int8)
        w_zp = rng.integers(-5, 5, 3 * group)
        acc = golden.conv2d_int(x, 77, w, w_zp, strides=strides, pads=pads, dilations=dilations, group=group)
        np.testing.assert_array_equal(acc, conv_reference(x, 77, w, w_zp, strides, pads, dilations, group))

    def test_pads_are_top_left_bottom_right(self):
        x = np.ones((1, 1, 2, 2), np.int8)
        w = np.ones((1, 1, 1, 1), np.int8)
        acc = golden.conv2d_int(x, 0, w, 0, pads=(1, 0, 0, 2))
        np.testing.assert_array_equal(acc[0, 0], [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]])

    def test_padding_stands_for_real_zero(self):
        # Padded taps contribute (x_zp - x_zp) * w = 0, whatever the zero point.
        x = np.full((1, 1, 1, 1), 200, np.uint8)
        w = np.full((1, 1, 3, 3), 5, np.int8)
        assert golden.conv2d_int(x, 200, w, 0, pads=(1, 1, 1, 1))[0, 0, 0, 0] == 0

    def test_depthwise(self):
        rng = np.random.default_rng(4)
        x = rng.integers(-128, 128, (1, 4, 5, 5)).astype(np.int8)
        w = rng.integers(-128, 128, (4, 1, 3, 3)).astype(np.int8)
        acc = golden.conv2d_int(x, 0, w, 0, group=4)
        for c in range(4):
            np.testing.assert_array_equal(acc[:, c:c + 1], golden.conv2d_int(x[:, c:c + 1], 0, w[c:c + 1], 0))

    def test_rejects_group_that_does_not_divide(self):
        with pytest.raises(ValueError, match="group=2"):
            golden.conv2d_int(np.zeros((1, 3, 4, 4), np.int8), 0, np.zeros((2, 3, 1, 1), np.int8), 0, group=2)

    def test_rejects_kernel_larger_than_padded_input(self):
        with pytest.raises(ValueError, match="does not fit"):
            golden.conv2d_int(np.zeros((1, 1, 2, 2), np.int8), 0, np.zeros((1, 1, 3, 3), np.int8), 0)

    def test_overflow_is_reported(self):
        x = np.full((1, 4096, 6, 6), -128, np.int8)
        w = np.full((1, 4096, 6, 6), -128, np.int8)  # 147456 products of 2**14
        with pytest.raises(ValueError, match="conv2d_int.*int32"):
            golden.conv2d_int(x, 0, w, 0)


class TestQLinear:
    def test_matmul_adds_int32_bias_then_requantizes_per_column(self):
        x = np.array([[1, 2]], np.int8)
        w = np.array([[1, 1], [1, -1]], np.int8)
        bias = np.array([10, -10], np.int32)
        y = golden.qlinear_matmul(x, 1.0, 0, w, [0.5, 0.25], 0, 1.0, 0, bias)
        np.testing.assert_array_equal(y, [[np.rint(13 * 0.5), np.rint(-11 * 0.25)]])  # [6, -3]: 6.5 -> 6

    def test_conv_per_channel_weight_zero_point_and_scale(self):
        rng = np.random.default_rng(5)
        x = rng.integers(0, 256, (1, 2, 5, 5)).astype(np.uint8)
        w = rng.integers(-128, 128, (3, 2, 3, 3)).astype(np.int8)
        w_scale, w_zp = np.float32([0.01, 0.02, 0.03]), np.array([0, 3, -3])
        bias = rng.integers(-1000, 1000, 3).astype(np.int32)
        y = golden.qlinear_conv(x, 0.05, 120, w, w_scale, w_zp, 0.2, 130, bias, pads=(1, 1, 1, 1))
        for c in range(3):
            y_c = golden.qlinear_conv(x, 0.05, 120, w[c:c + 1], w_scale[c], w_zp[c], 0.2, 130, bias[c:c + 1],
                                      pads=(1, 1, 1, 1))
            np.testing.assert_array_equal(y[:, c:c + 1], y_c)

    def test_bias_must_be_int32_per_output_channel(self):
        x, w = np.zeros((1, 2), np.int8), np.zeros((2, 3), np.int8)
        with pytest.raises(ValueError, match="bias must be an int32"):
            golden.qlinear_matmul(x, 1.0, 0, w, 1.0, 0, 1.0, 0, np.zeros(3, np.int64))
        with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
            golden.qlinear_matmul(x, 1.0, 0, w, 1.0, 0, 1.0, 0, np.zeros(2, np.int32))

    def test_bias_add_overflow_is_reported(self):
        x, w = np.full((1, 1), 127, np.int8), np.full((1, 1), 127, np.int8)
        with pytest.raises(ValueError, match="bias add.*int32"):
            golden.qlinear_matmul(x, 1.0, 0, w, 1.0, 0, 1.0, 0, np.array([2**31 - 1], np.int32))


class TestPools:
    def test_maxpool_padding_never_wins(self):
        x = np.full((1, 1, 2, 2), -100, np.int8)
        y = golden.maxpool(x, kernel=3, strides=1, pads=(1, 1, 1, 1))
        assert (y == -100).all()

    def test_avgpool_excludes_padding_by_default(self):
        x = np.full((1, 1, 3, 3), 10, np.uint8)
        y = golden.avgpool(x, 1.0, 0, 1.0, 0, kernel=3, strides=1, pads=(1, 1, 1, 1))
        assert (y == 10).all()
        with_pad = golden.avgpool(x, 1.0, 0, 1.0, 0, kernel=3, strides=1, pads=(1, 1, 1, 1),
                                  count_include_pad=True)
        np.testing.assert_array_equal(with_pad[0, 0], [[4, 7, 4], [7, 10, 7], [4, 7, 4]])  # 40/9, 60/9, 90/9

    def test_avgpool_adds_zero_point_before_rounding(self):
        x = np.array([[[[0, 1, 2, 5]]]], np.uint8)  # window means 0.5 and 3.5
        y = golden.avgpool(x, 1.0, 0, 1.0, 3, kernel=(1, 2), strides=(1, 2), pads=(0, 0, 0, 0))
        np.testing.assert_array_equal(y.ravel(), [4, 6])  # round(3.5) and round(6.5), not 0 + 3 and 4 + 3

    def test_global_avgpool_is_integer_sum_then_requantize(self):
        x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)  # sum 120, mean 7.5
        assert golden.global_avgpool(x, 1.0, 0, 1.0, 0)[0, 0, 0, 0] == 8  # 7.5 ties to even: 8
        assert golden.global_avgpool(x, 1.0, 0, 1.0, 3)[0, 0, 0, 0] == 11  # zero point after rounding

    def test_global_avgpool_refuses_what_onnxruntime_refuses(self):
        with pytest.raises(ValueError, match="outside onnxruntime's range"):
            golden.global_avgpool(np.zeros((1, 1, 2, 2), np.int8), 1024.0, 0, 1.0, 0)  # 1024 / 4 = 256


class TestQLinearAdd:
    def test_unit_scales_add_and_saturate(self):
        a = np.array([100, -100, 5, -128], np.int8)
        b = np.array([100, -100, -3, 0], np.int8)
        np.testing.assert_array_equal(golden.qlinear_add(a, 1.0, 0, b, 1.0, 0, 1.0, 0), [127, -128, 2, -128])

    def test_zero_points(self):
        a, b = np.array([10], np.uint8), np.array([20], np.uint8)
        # (10 - 4) * 0.5 + (20 - 8) * 0.25 = 6 -> 6 / 0.5 + 100 = 112
        assert golden.qlinear_add(a, 0.5, 4, b, 0.25, 8, 0.5, 100)[0] == 112

    def test_rejects_different_shapes(self):
        with pytest.raises(ValueError, match="same shape"):
            golden.qlinear_add(np.zeros(3, np.int8), 1.0, 0, np.zeros(4, np.int8), 1.0, 0, 1.0, 0)

    def test_fma_helper_rounds_once(self):
        # Against exact rational arithmetic: the result is a nearest float32, ties to even.
        rng = np.random.default_rng(6)
        a = rng.integers(-128, 128, 2000).astype(np.float32)
        b = rng.uniform(0.001, 10, 2000).astype(np.float32)
        c = (-a * b + rng.normal(0, 1e-3, 2000)).astype(np.float32)  # heavy cancellation
        # (1 + 2**-12)**2 = 1 + 2**-11 + 2**-24 sits exactly on a float32 midpoint; a tiny c decides the side,
        # but is lost when the sum is first rounded to float64 (double rounding).
        a = np.concatenate([a, np.float32([1 + 2**-12] * 3)])
        b = np.concatenate([b, np.float32([1 + 2**-12] * 3)])
        c = np.concatenate([c, np.float32([2**-80, -(2**-80), 0.0])])
        result = golden.fma_f32(a, b, c)
        for ai, bi, ci, ri in zip(a, b, c, result, strict=True):
            exact = Fraction(float(ai)) * Fraction(float(bi)) + Fraction(float(ci))
            below, above = np.nextafter(ri, np.float32(-np.inf)), np.nextafter(ri, np.float32(np.inf))
            error = abs(exact - Fraction(float(ri)))
            assert error <= abs(exact - Fraction(float(below)))
            assert error <= abs(exact - Fraction(float(above)))


class TestHardwareIdentities:
    def test_uint8_activation_maps_to_int8_exactly(self):
        rng = np.random.default_rng(7)
        x = rng.integers(0, 256, (1, 3, 6, 6)).astype(np.uint8)
        w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
        x_i8, zp_i8 = golden.to_signed_activation(x, 201)
        assert zp_i8 == 73 and x_i8.dtype == np.int8
        np.testing.assert_array_equal(golden.conv2d_int(x_i8, zp_i8, w, 0, pads=(1, 1, 1, 1)),
                                      golden.conv2d_int(x, 201, w, 0, pads=(1, 1, 1, 1)))
        back, zp = golden.to_unsigned_activation(x_i8, zp_i8)
        np.testing.assert_array_equal(back, x)
        assert zp == 201

    def test_uint8_output_maps_to_int8_exactly(self):
        acc = np.arange(-40000, 40000, 37)
        y_u8 = golden.requantize(acc, 0.004, 77, np.uint8)
        y_i8 = golden.requantize(acc, 0.004, 77 - 128, np.int8)
        np.testing.assert_array_equal(golden.to_unsigned_activation(y_i8, -51)[0], y_u8)

    @pytest.mark.parametrize("x_zp", [-128, -7, 0, 127])
    def test_fold_input_zero_point_with_padding_filled_by_x_zp(self, x_zp):
        rng = np.random.default_rng(8)
        x = rng.integers(-128, 128, (1, 3, 5, 6)).astype(np.int8)
        w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
        bias = rng.integers(-5000, 5000, 4).astype(np.int32)
        pads = (1, 2, 0, 1)
        with_zero_point = golden.conv2d_int(x, x_zp, w, 0, pads=pads).astype(np.int64) + bias[:, None, None]
        # The hardware's view: padding filled with x_zp, sum(x * w), bias already corrected.
        padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=x_zp)
        folded = golden.fold_input_zero_point(bias, x_zp, w)
        hardware = golden.conv2d_int(padded, 0, w, 0).astype(np.int64) + folded[:, None, None]
        np.testing.assert_array_equal(hardware, with_zero_point)
        # ... and filling padding with 0 instead would be wrong wherever a window touches it (if x_zp != 0)
        zero_padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        wrong = golden.conv2d_int(zero_padded, 0, w, 0).astype(np.int64) + folded[:, None, None]
        assert (wrong != with_zero_point).any() == (x_zp != 0)

    def test_gemm_hw_equals_qlinear_matmul_after_folding(self):
        rng = np.random.default_rng(9)
        x = rng.integers(0, 256, (6, 40)).astype(np.uint8)
        w = rng.integers(-127, 128, (40, 5)).astype(np.int8)
        bias = rng.integers(-20000, 20000, 5).astype(np.int32)
        w_scale = rng.uniform(0.001, 0.01, 5).astype(np.float32)
        reference = golden.qlinear_matmul(x, 0.02, 131, w, w_scale, 0, 0.1, 140, bias)
        x_i8, x_zp = golden.to_signed_activation(x, 131)
        y_i8 = golden.gemm_hw(x_i8, w, golden.fold_input_zero_point(bias, x_zp, w),
                              golden.requant_scale(0.02, w_scale, 0.1), 140 - 128)
        np.testing.assert_array_equal(golden.to_unsigned_activation(y_i8, 12)[0], reference)

    def test_fold_needs_symmetric_int8_weights(self):
        with pytest.raises(ValueError, match="w_q must be an array of dtype int8"):
            golden.fold_input_zero_point(None, 3, np.zeros((2, 2), np.uint8))


class TestArgumentErrors:
    @pytest.mark.parametrize("scale", [0.0, -1.0, np.inf, np.nan, 1e-50, 1e50])
    def test_scale_must_be_finite_and_positive(self, scale):
        with pytest.raises(ValueError, match="scale must be finite and positive"):
            golden.quantize([1.0], scale, 0)

    @pytest.mark.parametrize("dtype, zero_point",
                             [(np.int8, 128), (np.int8, -129), (np.uint8, -1), (np.uint8, 256)])
    def test_zero_point_must_fit_dtype(self, dtype, zero_point):
        with pytest.raises(ValueError, match=r"zero_point must lie in \[-?\d+, \d+\]"):
            golden.quantize([1.0], 1.0, zero_point, dtype)

    def test_zero_point_must_be_integer(self):
        with pytest.raises(ValueError, match="zero_point must be an integer"):
            golden.quantize([1.0], 1.0, 0.5)

    def test_dtype_must_be_8_bit(self):
        with pytest.raises(ValueError, match="dtype must be int8 or uint8"):
            golden.quantize([1.0], 1.0, 0, np.int16)

    def test_quantized_operands_must_be_8_bit_arrays(self):
        with pytest.raises(ValueError, match="x_q must be an array of dtype int8 or uint8, got dtype int64"):
            golden.matmul_int(np.zeros((1, 2), np.int64), 0, np.zeros((2, 1), np.int8), 0)

    def test_per_channel_length_must_match_axis(self):
        with pytest.raises(ValueError, match="scale has 3 values but axis 1 of shape"):
            golden.requantize(np.zeros((2, 4), np.int32), np.ones(3, np.float32), 0, axis=1)

    def test_per_channel_needs_an_axis(self):
        with pytest.raises(ValueError, match="no axis was given"):
            golden.quantize(np.zeros((2, 3)), [1.0, 2.0, 3.0], 0)

    def test_qrange(self):
        assert golden.qrange(np.int8) == (-128, 127) == golden.QRANGE[np.int8]
        assert golden.qrange("uint8") == (0, 255)
