"""Random test layers with their golden answers, shared by the model-level and RTL-level tests."""

import numpy as np

from verif import golden

__all__ = ["random_conv"]


def random_conv(rng, *, channels, out_channels, size, kernel, stride, pad):
    """Random int8 conv operands (one image) with the input zero point folded into the bias.

    Returns ``(operands, attrs, expected)``: ``compile_conv(cfg, *operands, **attrs)`` must produce
    ``expected`` (O, out_h, out_w), which the golden model computes with the zero point unfolded.
    """
    x = rng.integers(-128, 128, (channels, size, size), dtype=np.int8)
    w = rng.integers(-128, 128, (out_channels, channels, kernel, kernel), dtype=np.int8)
    x_zp = int(rng.integers(-128, 128))
    bias = rng.integers(-2**16, 2**16, out_channels, dtype=np.int32)
    scale = (rng.uniform(0.5, 2, out_channels) / (64 * np.sqrt(channels * kernel * kernel))).astype(np.float32)
    y_zp = int(rng.integers(-128, 128))
    pads = (pad, pad, pad, pad)
    acc = golden.conv2d_int(x[None], x_zp, w, 0, strides=(stride, stride), pads=pads)[0] + bias[:, None, None]
    expected = golden.requantize(acc, scale, y_zp, axis=0)
    folded = golden.fold_input_zero_point(bias, x_zp, w, output_axis=0)
    return (x, w, folded, scale, y_zp), {"strides": (stride, stride), "pads": pads, "pad_value": x_zp}, expected
