"""Bit-exact NumPy golden model of Tessera's int8 arithmetic.

Every function reproduces, bit for bit, what onnxruntime's CPU kernels compute on x86-64 (MLAS with AVX2, FMA
and VNNI, the machines the project tests on), so that one set of expected values serves the RTL, the
compiler's self-checks and the driver's ``--check`` mode. ``tests/test_golden_onnxruntime.py`` proves the
match on random quantized models in both ONNX quantization formats.

Where onnxruntime itself differs by platform the model follows the integer definition or the x86-64 kernel:
on x86 CPUs without VNNI, MLAS's uint8 x int8 kernels use ``vpmaddubsw``, which saturates pairs of products to
int16, so onnxruntime drifts from ONNX's (and this model's) exact sums unless the model was quantized with
``reduce_range``; ``qlinear_add`` documents its own platform dependence.

Conventions
-----------
* Quantized tensors are NumPy arrays of dtype ``int8`` or ``uint8``; accumulators are ``int32``.
* Scales are rounded to float32 first, as ONNX stores them; all float arithmetic is float32, in the order
  onnxruntime performs it (the order matters for the last bit).
* Rounding is round-half-to-even (``np.rint``), as ``cvtps2dq`` / ``nearbyintf`` do under the default mode.
* Activations are NCHW, convolution weights OIHW, matrix weights ``[K, N]`` (output channels last).
* Bad input raises ``ValueError`` naming the argument and what would be accepted.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from tessera.sw_driver.products import approximate_matmul

__all__ = [
    "QRANGE", "avgpool", "conv2d_int", "conv_acc_hw", "conv_hw", "dequantize", "fold_input_zero_point", "gemm_acc_hw",
    "gemm_hw", "global_avgpool",
    "matmul_int", "maxpool", "qlinear_add", "qlinear_conv", "qlinear_matmul", "qrange", "quantize",
    "requant_scale", "requantize", "to_signed_activation", "to_unsigned_activation",
]

QRANGE = {np.int8: (-128, 127), np.uint8: (0, 255)}
INT32_RANGE = (-(2**31), 2**31 - 1)


# ------------------------------------------------------------------------------------------------------------
# argument checks


def _qdtype(dtype, name="dtype"):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.type not in QRANGE:
        raise ValueError(f"{name} must be int8 or uint8, got {dtype!r}")
    return dt


def qrange(dtype):
    """``(min, max)`` of a quantized dtype (``np.int8`` or ``np.uint8``, or their names)."""
    return QRANGE[_qdtype(dtype).type]


def _quantized(q, name, dtypes=(np.int8, np.uint8)):
    q = np.asarray(q)
    if q.dtype.type not in dtypes:
        accepted = " or ".join(np.dtype(d).name for d in dtypes)
        raise ValueError(f"{name} must be an array of dtype {accepted}, got dtype {q.dtype}")
    return q


def _scale(scale, name):
    s = np.asarray(scale, dtype=np.float64)
    with np.errstate(over="ignore"):  # a scale beyond float32 becomes inf and is rejected just below
        s32 = s.astype(np.float32)
    if s.size == 0 or not np.all(np.isfinite(s32)) or not np.all(s32 > 0):
        raise ValueError(f"{name} must be finite and positive (as float32), got {scale!r}")
    return s32


def _zero_point(zero_point, dtype, name):
    zp = np.asarray(zero_point)
    if zp.size == 0 or not np.issubdtype(zp.dtype, np.integer):
        raise ValueError(f"{name} must be an integer (or integer array), got {zero_point!r}")
    lo, hi = qrange(dtype)
    if np.any(zp < lo) or np.any(zp > hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}] for {np.dtype(dtype).name}, got {zero_point!r}")
    return zp.astype(np.int64)


def _along(param, name, shape, axis):
    """Shape a per-tensor (size 1) or per-channel (1-D) parameter to broadcast along ``axis`` of ``shape``."""
    if param.size == 1:
        return param.reshape(())
    if param.ndim != 1:
        raise ValueError(f"{name} must be a scalar or 1-D per-channel array, got shape {param.shape}")
    if axis is None:
        raise ValueError(f"{name} has {param.size} values (per-channel) but no axis was given")
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis must lie in [{-len(shape)}, {len(shape) - 1}] for shape {shape}, got {axis}")
    if param.size != shape[axis]:
        raise ValueError(f"{name} has {param.size} values but axis {axis} of shape {shape} has {shape[axis]}")
    broadcast = [1] * len(shape)
    broadcast[axis] = param.size
    return param.reshape(broadcast)


def _check_int32(acc, what):
    lo, hi = INT32_RANGE
    if acc.size and (acc.min() < lo or acc.max() > hi):
        raise ValueError(f"{what}: accumulator range [{acc.min()}, {acc.max()}] overflows int32 "
                         f"[{lo}, {hi}]; split the reduction into smaller pieces")
    return acc.astype(np.int32)


def _int32_bias(bias, length, name="bias"):
    b = np.asarray(bias)
    if b.dtype != np.int32:
        raise ValueError(f"{name} must be an int32 array, got dtype {b.dtype}")
    if b.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) (one per output channel), got {b.shape}")
    return b.astype(np.int64)


def _pair(value, name):
    pair = tuple(int(v) for v in np.atleast_1d(value))
    if len(pair) == 1:
        pair = pair * 2
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be one or two positive integers, got {value!r}")
    return pair


def _pads(pads):
    quad = tuple(int(p) for p in np.atleast_1d(pads))
    if len(quad) != 4 or min(quad) < 0:
        raise ValueError(f"pads must be four non-negative integers (top, left, bottom, right), got {pads!r}")
    return quad


# ------------------------------------------------------------------------------------------------------------
# quantize / dequantize / requantize


def _saturate(values, dtype):
    lo, hi = qrange(dtype)
    return np.clip(values, lo, hi).astype(dtype)


def quantize(x, scale, zero_point, dtype=np.int8, axis=None):
    """ONNX ``QuantizeLinear`` as onnxruntime computes it.

    ``q = saturate(round_half_even(float32(x) / scale) + zero_point)``, the division in float32 (MLAS
    divides, it does not multiply by a reciprocal, which would differ in the last bit).

    Parameters
    ----------
    x : array_like of float
        Values to quantize; rounded to float32 first. NaN is rejected, +-inf saturates.
    scale, zero_point : scalar or 1-D array
        Per tensor, or per channel along ``axis``.
    dtype : np.int8 or np.uint8
        Quantized type.
    axis : int, optional
        Channel axis for per-channel parameters.
    """
    dt = _qdtype(dtype)
    x = np.asarray(x, dtype=np.float32)
    if np.isnan(x).any():
        raise ValueError("x contains NaN, which has no quantized value")
    s = _along(_scale(scale, "scale"), "scale", x.shape, axis)
    zp = _along(_zero_point(zero_point, dt, "zero_point"), "zero_point", x.shape, axis)
    return _saturate(np.rint(x / s).astype(np.float64) + zp, dt)


def dequantize(q, scale, zero_point, axis=None):
    """ONNX ``DequantizeLinear`` as onnxruntime computes it: ``float32(q - zero_point) * scale`` in float32.

    Parameters
    ----------
    q : ndarray of int8, uint8 or int32
        Quantized values (int32 for biases).
    scale, zero_point : scalar or 1-D array
        Per tensor, or per channel along ``axis``.
    axis : int, optional
        Channel axis for per-channel parameters.
    """
    q = _quantized(q, "q", (np.int8, np.uint8, np.int32))
    s = _along(_scale(scale, "scale"), "scale", q.shape, axis)
    if q.dtype == np.int32:
        zp = np.asarray(zero_point, dtype=np.int64)
        if np.any(zp != 0):
            raise ValueError(f"zero_point of an int32 tensor must be 0, got {zero_point!r}")
    else:
        zp = _zero_point(zero_point, q.dtype, "zero_point")
    zp = _along(zp, "zero_point", q.shape, axis)
    return (q.astype(np.int64) - zp).astype(np.float32) * s


def requant_scale(x_scale, w_scale, y_scale):
    """The float32 multiplier that maps an int32 accumulator to the output scale.

    ``float32(float32(x_scale * w_scale) / y_scale)``: onnxruntime's QLinearConv, QLinearMatMul and QGemm
    evaluate ``x_scale * w_scale[c] / y_scale`` left to right in float32.

    Parameters
    ----------
    x_scale, y_scale : float
        Input and output scales.
    w_scale : float or 1-D array
        Weight scale, per tensor or per output channel.

    Returns
    -------
    np.float32 or ndarray of float32
    """
    x_s = _scale(x_scale, "x_scale")
    y_s = _scale(y_scale, "y_scale")
    w_s = _scale(w_scale, "w_scale")
    for name, value in (("x_scale", x_s), ("y_scale", y_s)):
        if value.size != 1:
            raise ValueError(f"{name} must be a single value, got shape {value.shape}")
    if w_s.ndim > 1:
        raise ValueError(f"w_scale must be a scalar or 1-D per-channel array, got shape {w_s.shape}")
    scale = (x_s.reshape(()) * w_s) / y_s.reshape(())
    return scale if scale.ndim else np.float32(scale)


def requantize(acc, scale, zero_point, dtype=np.int8, axis=-1):
    """Requantize an int32 accumulator: ``saturate(round_half_even(float32(acc) * scale) + zero_point)``.

    This is MLAS's ``MlasRequantizeOutput``: convert to float32, multiply by the float32 scale, round half to
    even, add the zero point, saturate. It is the hardware requantiser's contract.

    Parameters
    ----------
    acc : array_like of int
        Accumulator; must fit int32.
    scale : float or 1-D array
        Float32 multiplier (see ``requant_scale``), per tensor or per channel along ``axis``.
    zero_point : int
        Output zero point.
    dtype : np.int8 or np.uint8
        Output type.
    axis : int
        Channel axis of ``acc`` for a per-channel ``scale``.
    """
    dt = _qdtype(dtype)
    acc = np.asarray(acc)
    if not np.issubdtype(acc.dtype, np.integer):
        raise ValueError(f"acc must be an integer array, got dtype {acc.dtype}")
    acc = _check_int32(acc.astype(np.int64), "requantize")
    s = _along(_scale(scale, "scale"), "scale", acc.shape, axis)
    zp = _zero_point(zero_point, dt, "zero_point")
    if zp.size != 1:
        raise ValueError(f"zero_point must be a single value, got shape {zp.shape}")
    return _saturate(np.rint(acc.astype(np.float32) * s).astype(np.float64) + zp.reshape(()), dt)


# ------------------------------------------------------------------------------------------------------------
# integer matrix multiply and convolution


def _exact_matmul(a, b):
    # Products of two 8-bit differences are below 2**16 and sums of K of them below 2**53 for any K < 2**37,
    # so float64 BLAS is exact whatever order it adds in, and far faster than an int64 einsum.
    return np.rint(np.matmul(a.astype(np.float64), b.astype(np.float64))).astype(np.int64)


def matmul_int(x_q, x_zp, w_q, w_zp):
    """Integer matrix product ``sum_k (x[m, k] - x_zp) * (w[k, n] - w_zp[n])`` as int32.

    Computed exactly (wider than int32), then checked: the sum must fit int32 (ValueError naming the shapes
    otherwise), since the hardware and onnxruntime accumulate in int32 and would wrap silently. Wrap is
    impossible while ``K * max|x - x_zp| * max|w - w_zp| < 2**31``: K <= 131071 when both differences stay
    within 128 (int8 x int8 with zero points folded away), K <= 33025 in the worst case (255 x 255).

    Parameters
    ----------
    x_q : ndarray of int8 or uint8, shape (..., M, K)
    x_zp : int
    w_q : ndarray of int8 or uint8, shape (K, N)
    w_zp : int or 1-D array of N (per output column)
    """
    x = _quantized(x_q, "x_q")
    w = _quantized(w_q, "w_q")
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"matmul_int needs x_q (..., K) and w_q (K, N), got x_q {x.shape} and w_q {w.shape}")
    x_zp = _zero_point(x_zp, x.dtype, "x_zp")
    if x_zp.size != 1:
        raise ValueError(f"x_zp must be a single value, got shape {x_zp.shape}")
    w_zp = _along(_zero_point(w_zp, w.dtype, "w_zp"), "w_zp", w.shape, 1)
    acc = _exact_matmul(x.astype(np.int64) - x_zp.reshape(()), w.astype(np.int64) - w_zp)
    return _check_int32(acc, f"matmul_int(x_q {x.shape}, w_q {w.shape})")


def _windows(x, kernel, strides, pads, dilations, pad_value):
    """``(N, C, OH, OW, KH, KW)`` view of every kernel window of NCHW ``x`` padded with ``pad_value``."""
    top, left, bottom, right = pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=pad_value)
    extent = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True))
    if padded.shape[2] < extent[0] or padded.shape[3] < extent[1]:
        raise ValueError(f"kernel {kernel} (dilations {dilations}) does not fit the padded input "
                         f"{padded.shape[2:]} (input {x.shape[2:]}, pads {pads})")
    windows = sliding_window_view(padded, extent, axis=(2, 3))
    return windows[:, :, :: strides[0], :: strides[1], :: dilations[0], :: dilations[1]]


def conv2d_int(x_q, x_zp, w_q, w_zp, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1):
    """Integer 2-D convolution ``sum (x - x_zp) * (w - w_zp[o])`` as int32, ONNX ``Conv`` geometry.

    Padding is filled with ``x_zp`` (it stands for real zero), so padded taps contribute nothing.

    Parameters
    ----------
    x_q : ndarray of int8 or uint8, shape (N, C, H, W)
    x_zp : int
    w_q : ndarray of int8 or uint8, shape (O, C / group, KH, KW)
    w_zp : int or 1-D array of O (per output channel)
    strides, dilations : (int, int)
    pads : (top, left, bottom, right)
        ONNX order ``(x1_begin, x2_begin, x1_end, x2_end)``.
    group : int
        ``group == C == O`` is a depthwise convolution.
    """
    x = _quantized(x_q, "x_q")
    w = _quantized(w_q, "w_q")
    strides, dilations, pads = _pair(strides, "strides"), _pair(dilations, "dilations"), _pads(pads)
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"conv2d_int needs x_q NCHW and w_q OIHW, got x_q {x.shape} and w_q {w.shape}")
    channels, out_channels = x.shape[1], w.shape[0]
    if group < 1 or channels % group or out_channels % group or w.shape[1] * group != channels:
        raise ValueError(f"group={group} does not fit x_q {x.shape} and w_q {w.shape}: need C and O "
                         f"divisible by group and w_q.shape[1] == C / group")
    x_zp = _zero_point(x_zp, x.dtype, "x_zp")
    if x_zp.size != 1:
        raise ValueError(f"x_zp must be a single value, got shape {x_zp.shape}")
    w_zp = _along(_zero_point(w_zp, w.dtype, "w_zp"), "w_zp", w.shape, 0)

    windows = _windows(x.astype(np.int64) - x_zp.reshape(()), w.shape[2:], strides, pads, dilations, 0)
    batch, _, out_h, out_w, kh, kw = windows.shape
    # (G, N*OH*OW, Cg*KH*KW) patches against (G, Cg*KH*KW, Og) weights, one matrix product per group.
    patches = windows.reshape(batch, group, channels // group, out_h, out_w, kh, kw)
    patches = patches.transpose(1, 0, 3, 4, 2, 5, 6).reshape(group, batch * out_h * out_w, -1)
    weights = (w.astype(np.int64) - w_zp).reshape(group, out_channels // group, -1).transpose(0, 2, 1)
    acc = _exact_matmul(patches, weights)  # (G, N*OH*OW, Og)
    acc = acc.reshape(group, batch, out_h, out_w, -1).transpose(1, 0, 4, 2, 3)
    acc = acc.reshape(batch, out_channels, out_h, out_w)
    return _check_int32(acc, f"conv2d_int(x_q {x.shape}, w_q {w.shape})")


def qlinear_matmul(x_q, x_scale, x_zp, w_q, w_scale, w_zp, y_scale, y_zp, bias=None, y_dtype=None):
    """ONNX ``QLinearMatMul`` (and onnxruntime's ``QGemm`` with an int32 bias; the caller transposes B).

    ``requantize(matmul_int(x, w) + bias, requant_scale(x_scale, w_scale, y_scale), y_zp)``, per column when
    ``w_scale`` is per channel.

    Parameters
    ----------
    x_q : ndarray (..., M, K) of int8 or uint8
    w_q : ndarray (K, N) of int8 or uint8
    x_scale, y_scale : float; w_scale : float or 1-D array of N
    x_zp, y_zp : int; w_zp : int or 1-D array of N
    bias : ndarray (N,) of int32, optional
        Already in accumulator units (scale ``x_scale * w_scale``).
    y_dtype : np.int8 or np.uint8, optional
        Output type; defaults to the type of ``x_q``.
    """
    acc = matmul_int(x_q, x_zp, w_q, w_zp).astype(np.int64)
    if bias is not None:
        acc = _check_int32(acc + _int32_bias(bias, acc.shape[-1]), "qlinear_matmul bias add")
    y_dtype = np.asarray(x_q).dtype if y_dtype is None else y_dtype
    return requantize(acc, requant_scale(x_scale, w_scale, y_scale), y_zp, y_dtype, axis=-1)


def qlinear_conv(x_q, x_scale, x_zp, w_q, w_scale, w_zp, y_scale, y_zp, bias=None, y_dtype=None,
                 **conv_attrs):
    """ONNX ``QLinearConv``: ``requantize(conv2d_int + bias, requant_scale(...), y_zp)`` per output channel.

    Parameters
    ----------
    x_q : ndarray (N, C, H, W); w_q : ndarray (O, C / group, KH, KW)
    x_scale, y_scale : float; w_scale : float or 1-D array of O
    x_zp, y_zp : int; w_zp : int or 1-D array of O
    bias : ndarray (O,) of int32, optional
    y_dtype : np.int8 or np.uint8, optional
        Defaults to the type of ``x_q``.
    **conv_attrs
        ``strides``, ``pads``, ``dilations``, ``group`` as for ``conv2d_int``.
    """
    acc = conv2d_int(x_q, x_zp, w_q, w_zp, **conv_attrs).astype(np.int64)
    if bias is not None:
        acc = _check_int32(acc + _int32_bias(bias, acc.shape[1])[:, None, None], "qlinear_conv bias add")
    y_dtype = np.asarray(x_q).dtype if y_dtype is None else y_dtype
    return requantize(acc, requant_scale(x_scale, w_scale, y_scale), y_zp, y_dtype, axis=1)


# ------------------------------------------------------------------------------------------------------------
# pools and element-wise add


def maxpool(x_q, kernel, strides, pads):
    """``MaxPool`` on quantized NCHW values (exact: max commutes with a monotonic quantization).

    Padding is filled with the dtype's minimum, so it never wins, as onnxruntime does.
    """
    x = _quantized(x_q, "x_q")
    if x.ndim != 4:
        raise ValueError(f"maxpool needs NCHW x_q, got shape {x.shape}")
    kernel, strides, pads = _pair(kernel, "kernel"), _pair(strides, "strides"), _pads(pads)
    return _windows(x, kernel, strides, pads, (1, 1), qrange(x.dtype)[0]).max(axis=(4, 5))


def _pool_quantize(y, y_scale, y_zp, dtype):
    # onnxruntime's pool kernels quantize with nearbyintf(y / y_scale + y_zero_point): the zero point is
    # added in float *before* rounding, unlike QuantizeLinear; a tie such as 2.5 + 3 rounds to 6, not 5.
    return _saturate(np.rint(y / y_scale + np.float32(y_zp)).astype(np.float64), dtype)


def avgpool(x_q, x_scale, x_zp, y_scale, y_zp, kernel, strides, pads, count_include_pad=False):
    """onnxruntime's ``QLinearAveragePool`` (what a QDQ ``AveragePool`` is fused into), bit for bit.

    The kernel works in float: ``xf = x_scale * float32(x - x_zp)``; per window ``acc += xf`` in float32 in
    row-major window order over the taps inside the image (padding is skipped); ``acc /= float32(count)`` with
    ``count`` the number of those taps (the full window if ``count_include_pad``); then
    ``y = saturate(round_half_even(acc / y_scale + float32(y_zp)))``. A window covering the whole unpadded
    image falls back to ``global_avgpool`` (integer), as onnxruntime does.

    Parameters
    ----------
    x_q : ndarray (N, C, H, W) of int8 or uint8
    x_scale, y_scale : float
    x_zp, y_zp : int
    kernel, strides : (int, int)
    pads : (top, left, bottom, right)
    count_include_pad : bool
    """
    x = _quantized(x_q, "x_q")
    if x.ndim != 4:
        raise ValueError(f"avgpool needs NCHW x_q, got shape {x.shape}")
    kernel, strides, pads = _pair(kernel, "kernel"), _pair(strides, "strides"), _pads(pads)
    if kernel == x.shape[2:] and not any(pads):
        return global_avgpool(x, x_scale, x_zp, y_scale, y_zp)
    x_s, y_s = _scale(x_scale, "x_scale").reshape(()), _scale(y_scale, "y_scale").reshape(())
    x_zp = _zero_point(x_zp, x.dtype, "x_zp").reshape(())
    y_zp = _zero_point(y_zp, x.dtype, "y_zp").reshape(())

    xf = dequantize(x, x_s, x_zp)
    taps = _windows(xf, kernel, strides, pads, (1, 1), np.nan)
    inside = ~np.isnan(taps)
    acc = np.zeros(taps.shape[:4], np.float32)
    for i in range(kernel[0]):  # the kernel's loop order: rows, then columns
        for j in range(kernel[1]):
            acc = np.where(inside[..., i, j], acc + taps[..., i, j], acc)
    if count_include_pad:
        count = np.float32(kernel[0] * kernel[1])
    else:
        count = inside.sum(axis=(4, 5)).astype(np.float32)
    return _pool_quantize(acc / count, y_s, y_zp, x.dtype)


def global_avgpool(x_q, x_scale, x_zp, y_scale, y_zp):
    """onnxruntime's ``QLinearGlobalAveragePool``, bit for bit; integer, unlike ``avgpool``.

    ``acc = sum(x) - x_zp * H * W`` in int32, then ``requantize(acc, scale, y_zp)`` with
    ``scale = float32(x_scale / float32(y_scale * float32(H * W)))`` (MLAS's order). onnxruntime refuses
    ``scale`` outside ``[2**-32, 256)`` and images of 2**24 pixels or more; so does this function.

    Parameters
    ----------
    x_q : ndarray (N, C, H, W) of int8 or uint8
    x_scale, y_scale : float
    x_zp, y_zp : int

    Returns
    -------
    ndarray (N, C, 1, 1) of the input dtype
    """
    x = _quantized(x_q, "x_q")
    if x.ndim != 4:
        raise ValueError(f"global_avgpool needs NCHW x_q, got shape {x.shape}")
    pixels = x.shape[2] * x.shape[3]
    x_s, y_s = _scale(x_scale, "x_scale").reshape(()), _scale(y_scale, "y_scale").reshape(())
    scale = x_s / (y_s * np.float32(pixels))
    if pixels >= 2**24 or not 2.0**-32 <= scale < 256.0:
        raise ValueError(f"global_avgpool: x_scale / (y_scale * {pixels} pixels) = {scale} is outside "
                         f"onnxruntime's range [2**-32, 256) (or the image has 2**24 pixels or more)")
    x_zp = _zero_point(x_zp, x.dtype, "x_zp").reshape(())
    acc = x.astype(np.int64).sum(axis=(2, 3), keepdims=True) - x_zp * pixels
    return requantize(acc, scale, y_zp, x.dtype)


def fma_f32(a, b, c):
    """Fused multiply-add ``round_f32(a * b + c)`` with a single rounding, for float32 arrays."""
    a, b, c = (np.asarray(v, np.float32).astype(np.float64) for v in (a, b, c))
    product = a * b  # exact: 24 + 24 significant bits fit a float64
    total = product + c
    # TwoSum: ``error`` is exactly (product + c) - total. Rounding ``total`` to float32 is then correct except
    # when ``total`` sits exactly on a float32 midpoint and the lost ``error`` decides the side.
    back = total - product
    error = (product - (total - back)) + (c - back)
    nearest = total.astype(np.float32)
    toward_total = np.nextafter(nearest, np.where(total > nearest, np.inf, -np.inf).astype(np.float32))
    on_midpoint = (total != nearest) & ((nearest.astype(np.float64) + toward_total) / 2 == total)
    pick_other = on_midpoint & (error != 0) & ((error > 0) == (toward_total > nearest))
    return np.where(pick_other, toward_total, nearest).astype(np.float32)


def qlinear_add(a_q, a_scale, a_zp, b_q, b_scale, b_zp, y_scale, y_zp):
    """onnxruntime's ``QLinearAdd`` (what a QDQ ``Add`` is fused into) on x86-64 with AVX2, bit for bit.

    MLAS works in float32 with fused multiply-adds (``MlasQLinearAddKernelAvx2Helper``)::

        ra = a_scale / y_scale                  rb = b_scale / y_scale
        fixed = float32(y_zp) - fma(ra, a_zp, rb * b_zp)
        y = saturate(round_half_even(fma(a, ra, fma(b, rb, fixed))))

    with ``a``, ``b`` the raw quantized values. (ARM builds use a fixed-point kernel and SSE-only builds
    separate multiplies and adds; both can differ from this in the last bit.) Only same-shape operands are
    supported: broadcasting takes a different path in onnxruntime.

    Parameters
    ----------
    a_q, b_q : ndarray of int8 or uint8, same shape and dtype
    a_scale, b_scale, y_scale : float
    a_zp, b_zp, y_zp : int
    """
    a = _quantized(a_q, "a_q")
    b = _quantized(b_q, "b_q")
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"qlinear_add needs a_q and b_q of the same shape and dtype, got {a.shape} "
                         f"{a.dtype} and {b.shape} {b.dtype}")
    ra = _scale(a_scale, "a_scale").reshape(()) / _scale(y_scale, "y_scale").reshape(())
    rb = _scale(b_scale, "b_scale").reshape(()) / _scale(y_scale, "y_scale").reshape(())
    a_zp, b_zp, y_zp = (_zero_point(zp, a.dtype, name).reshape(()).astype(np.float32)
                        for zp, name in ((a_zp, "a_zp"), (b_zp, "b_zp"), (y_zp, "y_zp")))
    fixed = y_zp - fma_f32(ra, a_zp, rb * b_zp)
    y = np.rint(fma_f32(a.astype(np.float32), ra, fma_f32(b.astype(np.float32), rb, fixed)).astype(np.float64))
    # MLAS converts with _mm256_cvtps_epi32 before it saturates: a value outside int32 (or NaN: huge scales) becomes
    # the "integer indefinite", INT32_MIN, and so the lowest value of the type, whatever its sign
    with np.errstate(invalid="ignore"):
        y = np.where((y >= INT32_RANGE[0]) & (y <= INT32_RANGE[1]), y, INT32_RANGE[0])
    return _saturate(y, a.dtype)


# ------------------------------------------------------------------------------------------------------------
# what the accelerator core computes


def fold_input_zero_point(bias, x_zp, w_q, output_axis=None):
    """Fold the input zero point into the bias, for hardware that computes ``sum(x * w)`` only.

    ``sum_k (x - x_zp) w + bias == sum_k x w + (bias - x_zp * sum_k w)``, exact in integers. It needs weights
    with zero point 0 (onnxruntime's quantizer makes int8 weights symmetric), and the hardware must then fill
    padding with ``x_zp`` (not 0), so that padded taps still cancel against the folded term.

    Parameters
    ----------
    bias : ndarray (O,) of int32, or None for zeros
    x_zp : int
        Input zero point (any integer: it is subtracted, not stored).
    w_q : ndarray of int8
        ``(K, N)`` matrix weights or ``(O, C / group, KH, KW)`` convolution weights.
    output_axis : int, optional
        Axis of ``w_q`` holding output channels; default -1 for 2-D and 0 for 4-D weights.

    Returns
    -------
    ndarray (O,) of int32
    """
    w = _quantized(w_q, "w_q", (np.int8,))
    if output_axis is None:
        if w.ndim not in (2, 4):
            raise ValueError(f"w_q must be 2-D (K, N) or 4-D OIHW without output_axis, got shape {w.shape}")
        output_axis = -1 if w.ndim == 2 else 0
    output_axis %= w.ndim
    x_zp = np.asarray(x_zp)
    if x_zp.size != 1 or not np.issubdtype(x_zp.dtype, np.integer):
        raise ValueError(f"x_zp must be a single integer, got {x_zp!r}")
    reduce_axes = tuple(a for a in range(w.ndim) if a != output_axis)
    weight_sums = w.astype(np.int64).sum(axis=reduce_axes)
    bias = np.zeros(w.shape[output_axis], np.int32) if bias is None else bias
    folded = _int32_bias(bias, w.shape[output_axis]) - int(x_zp) * weight_sums
    return _check_int32(folded, "fold_input_zero_point")


def to_signed_activation(x_u8, zp):
    """Map a uint8 activation and its zero point to int8: ``x - 128``, ``zp - 128``.

    Exact: every product uses ``x - zp``, which the shift leaves unchanged, and the uint8 range [0, 255]
    moves onto the int8 range [-128, 127] together with the zero point, so saturation is unchanged too.

    Returns
    -------
    (ndarray of int8, int)
    """
    x = _quantized(x_u8, "x_u8", (np.uint8,))
    zp = _zero_point(zp, np.uint8, "zp")
    if zp.size != 1:
        raise ValueError(f"zp must be a single value, got shape {zp.shape}")
    return (x.astype(np.int16) - 128).astype(np.int8), int(zp.reshape(())) - 128


def to_unsigned_activation(x_i8, zp):
    """Inverse of ``to_signed_activation``: ``x + 128``, ``zp + 128`` (for outputs read back as int8)."""
    x = _quantized(x_i8, "x_i8", (np.int8,))
    zp = _zero_point(zp, np.int8, "zp")
    if zp.size != 1:
        raise ValueError(f"zp must be a single value, got shape {zp.shape}")
    return (x.astype(np.int16) + 128).astype(np.uint8), int(zp.reshape(())) + 128


def gemm_acc_hw(x_i8, w_i8, multiplier="exact"):
    """What the accelerator's accumulators hold for ``x_i8 @ w_i8``: int32 ``(M, N)`` from ``multiplier``'s
    products (a configuration's PE multiplier, `tessera.sw_driver.products`); a ``raw`` command returns it."""
    x = _quantized(x_i8, "x_i8", (np.int8,))
    w = _quantized(w_i8, "w_i8", (np.int8,))
    if multiplier == "exact":
        acc = matmul_int(x, 0, w, 0).astype(np.int64)
    else:
        if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
            raise ValueError(f"gemm_acc_hw needs x_i8 (..., K) and w_i8 (K, N), got {x.shape} and {w.shape}")
        acc = approximate_matmul(x, w, multiplier)
    return _check_int32(acc, f"gemm_hw(x_i8 {x.shape}, w_i8 {w.shape})").astype(np.int32)


def gemm_hw(x_i8, w_i8, bias_i32, scale_f32, y_zp, multiplier="exact"):
    """What the accelerator core computes: ``requantize(x @ w + bias, scale[n], y_zp)`` to int8.

    No input zero point (it is folded into the bias, see ``fold_input_zero_point``), no weight zero point.
    The products are ``multiplier``'s (`gemm_acc_hw`).

    Parameters
    ----------
    x_i8 : ndarray (M, K) of int8
    w_i8 : ndarray (K, N) of int8
    bias_i32 : ndarray (N,) of int32
    scale_f32 : float or ndarray (N,) of float32
        Per-column requantisation multiplier (``requant_scale``).
    y_zp : int in [-128, 127]
    multiplier : str
        A name in `tessera.hw.pe_multipliers.MULTIPLIERS`.
    """
    acc = gemm_acc_hw(x_i8, w_i8, multiplier).astype(np.int64)
    acc = _check_int32(acc + _int32_bias(bias_i32, acc.shape[-1], "bias_i32"), "gemm_hw bias add")
    return requantize(acc, scale_f32, y_zp, np.int8, axis=-1)


def _conv_patches(x_i8, w_i8, strides, pads, pad_value):
    """The windows of int8 NCHW ``x_i8`` as rows ``(N * OH * OW, C * KH * KW)``, ``w_i8`` as ``(C * KH * KW, O)``,
    and the output's ``(N, OH, OW)``."""
    x = _quantized(x_i8, "x_i8", (np.int8,))
    w = _quantized(w_i8, "w_i8", (np.int8,))
    windows = _windows(x, w.shape[2:], _pair(strides, "strides"), _pads(pads), (1, 1), pad_value)
    batch, _, out_h, out_w = windows.shape[:4]
    patches = windows.transpose(0, 2, 3, 1, 4, 5).reshape(batch * out_h * out_w, -1)
    return patches, w.reshape(w.shape[0], -1).T, (batch, out_h, out_w)


def conv_acc_hw(x_i8, w_i8, *, strides=(1, 1), pads=(0, 0, 0, 0), pad_value=0, multiplier="exact"):
    """The accumulators of a convolution (as `conv_hw`, before bias and requantisation): int32
    ``(N, O, OH, OW)``."""
    patches, w, (batch, out_h, out_w) = _conv_patches(x_i8, w_i8, strides, pads, pad_value)
    return gemm_acc_hw(patches, w, multiplier).reshape(batch, out_h, out_w, -1).transpose(0, 3, 1, 2)


def conv_hw(x_i8, w_i8, bias_i32, scale_f32, y_zp, *, strides=(1, 1), pads=(0, 0, 0, 0), pad_value=0,
            multiplier="exact"):
    """What the accelerator computes for a convolution of int8 NCHW ``x_i8`` by dense OIHW ``w_i8``: every
    window (padded with ``pad_value``, the input zero point) times the weights with ``multiplier``'s products,
    plus ``bias_i32``, requantised by ``scale_f32`` to ``y_zp``; ``(N, O, OH, OW)`` int8."""
    patches, w, (batch, out_h, out_w) = _conv_patches(x_i8, w_i8, strides, pads, pad_value)
    y = gemm_hw(patches, w, bias_i32, scale_f32, y_zp, multiplier)
    return y.reshape(batch, out_h, out_w, -1).transpose(0, 3, 1, 2)
